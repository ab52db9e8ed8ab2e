#!/usr/bin/env bash
# Runs Debian 13's skopeo (1.18: the newer zstd:chunked form, with a tar-split and
# io.github.containers.zstd-chunked.* annotations) from a cached trixie chroot. Debian 12's
# own skopeo 1.9 writes the older form; the partial-pull tests need both.
#
# Usage: tests/tools/skopeo-trixie.sh --prepare      build the chroot if missing, then exit
#        tests/tools/skopeo-trixie.sh SKOPEO-ARGS…   run skopeo inside it
#
# The chroot is made once (debootstrap minbase + skopeo, about 2 minutes from a mirror) and
# kept; later calls cost a chroot and a mount namespace (well under a second). A build that
# is killed leaves only a *.tmp directory, which the next build removes; concurrent callers
# wait on a lock for the one build.
#
# Each run happens in a private mount namespace (unshare --mount): the working directory is
# bind-mounted at /work inside the chroot and skopeo starts there, so relative oci: paths
# work; arguments naming the working directory by its absolute path (oci:DIR:TAG,
# oci:DIR/sub:TAG) are rewritten to /work. /proc, a private /var/tmp (skopeo's blob
# staging) and an empty tmpfs /tmp are mounted in that namespace too, so
# nothing shows in the host's mount table, nothing is left mounted if the run is killed, and
# the cached chroot is never written by a run (the trap removes the private /var/tmp).
#
# Environment:
#   STRATA_TEST_CACHE     cache root [/var/cache/strata-tests]
#   STRATA_TRIXIE_SKOPEO  the chroot [$STRATA_TEST_CACHE/trixie-skopeo]
#   STRATA_SKOPEO_WORKDIR the directory bind-mounted at /work [the current directory]
#   STRATA_TEST_MIRROR    Debian mirror [the first Debian URI in this machine's apt sources]
# Needs root (debootstrap, chroot, mounts) and debootstrap (tools/setup installs it).
# Exit status: skopeo's; 1 when the chroot cannot be made (the reason on stderr, with the
# debootstrap log's tail).
set -euo pipefail

CACHE=${STRATA_TEST_CACHE:-/var/cache/strata-tests}
CH=${STRATA_TRIXIE_SKOPEO:-$CACHE/trixie-skopeo}
SUITE=trixie
me=skopeo-trixie.sh

die() { echo "$me: $*" >&2; exit 1; }

# The first Debian archive URI in this machine's apt sources (one-line and deb822 formats).
debian_mirror() {
    if [ -n "${STRATA_TEST_MIRROR:-}" ]; then echo "$STRATA_TEST_MIRROR"; return; fi
    local f uri
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        uri=$(awk '
            /^[[:space:]]*#/ { next }
            $1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:\/\//) { print $i; break } }
            $1 == "URIs:" { for (i = 2; i <= NF; i++) print $i }
        ' "$f" | grep -E '^https?://[^ ]*/debian/?$' | head -n1 || true)
        if [ -n "$uri" ]; then echo "${uri%/}"; return; fi
    done
    die "no Debian mirror in this machine's apt sources; set STRATA_TEST_MIRROR=URL"
}

ready() { [ -f "$CH/.strata-ready" ] && [ -x "$CH/usr/bin/skopeo" ]; }

build() {
    local tmp=$CH.tmp log=$CH.log mirror t0=$SECONDS
    command -v debootstrap >/dev/null || die "debootstrap not installed (tools/setup installs it)"
    [ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot)"
    mirror=$(debian_mirror)
    # A killed build leaves $tmp; never follow mounts out of it while removing it.
    rm -rf --one-file-system "$tmp"
    mkdir -p "$CACHE/debs-$SUITE"
    echo "$me: building the $SUITE chroot with skopeo in $CH (once; about 2 minutes)" >&2
    # skopeo's dependency on the virtual container-network-stack stops debootstrap's own
    # configure step; every package is unpacked by then, and dpkg --force-depends finishes.
    debootstrap --variant=minbase --include=skopeo,ca-certificates \
        --cache-dir="$CACHE/debs-$SUITE" "$SUITE" "$tmp" "$mirror" >"$log" 2>&1 || true
    [ -x "$tmp/usr/bin/skopeo" ] ||
        { tail -n 15 "$log" >&2; die "debootstrap $SUITE from $mirror made no skopeo (log: $log)"; }
    unshare --mount --propagation private sh -c '
        mount -t proc proc "$1/proc" && chroot "$1" dpkg --configure --force-depends -a' \
        sh "$tmp" >>"$log" 2>&1 || true
    chroot "$tmp" skopeo --version >/dev/null 2>>"$log" ||
        { tail -n 15 "$log" >&2; die "skopeo in the $SUITE chroot does not run (log: $log)"; }
    mkdir -p "$tmp/work"
    # debootstrap's downloads stay in $CACHE/debs-$SUITE; the chroot needs none of them
    rm -f "$tmp"/var/cache/apt/archives/*.deb
    chroot "$tmp" skopeo --version >"$tmp/.strata-ready"
    rm -rf --one-file-system "$CH"
    mv "$tmp" "$CH"
    echo "$me: $(cat "$CH/.strata-ready") ready in $((SECONDS - t0)) s" >&2
}

ensure() {
    ready && return 0
    mkdir -p "$(dirname "$CH")"
    exec 9>"$CH.lock"
    flock 9
    ready || build
    flock -u 9
    exec 9>&-
}

ensure
[ "${1:-}" = --prepare ] && exit 0

# ---- a run, in a private mount namespace: nothing of it outlives this process
if [ "${STRATA_SKOPEO_IN_NS:-}" != 1 ]; then
    export STRATA_SKOPEO_IN_NS=1
    exec unshare --mount --propagation private "$0" "$@"
fi
WORKDIR=$(realpath "${STRATA_SKOPEO_WORKDIR:-$PWD}")
[ "$WORKDIR" != / ] || die "STRATA_SKOPEO_WORKDIR=/ (name a directory below /)"
vartmp=$(mktemp -d "${TMPDIR:-/var/tmp}/strata-skopeo-trixie.XXXXXX")
trap 'umount -R "$CH/work" "$CH/proc" "$CH/var/tmp" "$CH/tmp" 2>/dev/null || true; rm -rf --one-file-system "$vartmp"' EXIT
mount -t proc proc "$CH/proc"
mount --bind "$WORKDIR" "$CH/work"
mount --bind "$vartmp" "$CH/var/tmp"
# a path outside /work lands here and vanishes with the run, never in the cached chroot
mount -t tmpfs -o size=64m tmpfs "$CH/tmp"
args=()
for a in "$@"; do
    # $WORKDIR as a whole path component: before '/' or ':' (oci:DIR:TAG) or at the end
    a=${a//"$WORKDIR/"/"/work/"}
    a=${a//"$WORKDIR:"/"/work:"}
    [[ $a == *"$WORKDIR" ]] && a="${a%"$WORKDIR"}/work"
    args+=("$a")
done
# not exec: the trap must run
rc=0
chroot "$CH" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin TMPDIR=/var/tmp \
    sh -c 'cd /work && exec skopeo "$@"' skopeo "${args[@]}" || rc=$?
exit "$rc"
