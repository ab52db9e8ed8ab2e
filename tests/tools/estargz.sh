#!/usr/bin/env bash
# Runs estargz-writer (tests/tools/estargz/main.go): converts a layer into an eStargz blob
# with the stargz-snapshotter library, built offline from Debian's packages
# (golang-go, golang-github-containerd-stargz-snapshotter-dev; tools/setup installs them).
#
# Usage: tests/tools/estargz.sh --prepare          build the binary if missing, then exit
#        tests/tools/estargz.sh [OPTIONS] IN OUT   convert; prints the blob's digest, size,
#                                                  diffID, tocDigest, uncompressedSize (JSON)
#
# The binary is cached under a name that carries main.go's sha256 and the library package's
# version, so editing either rebuilds it (about 5 s; 0 s once cached). Concurrent callers wait
# on a lock for the one build; a killed build leaves only a temporary file.
#
# Environment:
#   STRATA_TEST_CACHE  cache root [/var/cache/strata-tests]
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${STRATA_TEST_CACHE:-/var/cache/strata-tests}
DIR=$CACHE/estargz-writer
SRC=$HERE/estargz/main.go
LIB=golang-github-containerd-stargz-snapshotter-dev
me=estargz.sh

die() { echo "$me: $*" >&2; exit 1; }

command -v go >/dev/null || die "go not installed (Debian golang-go; tools/setup installs it)"
ver=$(dpkg-query -W -f='${Version}' "$LIB" 2>/dev/null) || true
[ -n "$ver" ] || die "$LIB not installed (tools/setup installs it)"
key=$(cat "$SRC" <(echo "$ver") <(go version) | sha256sum | cut -c1-16)
BIN=$DIR/estargz-writer-$key

if [ ! -x "$BIN" ]; then
    mkdir -p "$DIR"
    exec 9>"$DIR/lock"
    flock 9
    if [ ! -x "$BIN" ]; then
        # GOPATH mode over Debian's library sources: no module proxy, no network
        (cd "$HERE/estargz" &&
            GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$DIR/go-build" GOFLAGS= \
                go build -o "$BIN.tmp" .) >"$DIR/build.log" 2>&1 ||
            { tail -n 15 "$DIR/build.log" >&2; die "go build of $SRC failed (log: $DIR/build.log)"; }
        mv "$BIN.tmp" "$BIN"
        # older builds of other main.go versions
        find "$DIR" -maxdepth 1 -name 'estargz-writer-*' ! -name "${BIN##*/}" -delete
    fi
    flock -u 9
    exec 9>&-
fi
[ "${1:-}" = --prepare ] && exit 0
exec "$BIN" "$@"
