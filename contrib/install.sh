#!/usr/bin/env bash
# Installs strata and its drop-in names: mkcomposefs, composefs-info (and,
# once mounting lands, mount.composefs) as symlinks to the one binary.
# Usage: contrib/install.sh [PREFIX]   (default /usr/local; binary from target/release)
set -euo pipefail
prefix=${1:-/usr/local}
here=$(cd "$(dirname "$0")/.." && pwd)
bin="$here/target/release/strata"
[ -x "$bin" ] || { echo "install.sh: build first: cargo build --release" >&2; exit 1; }
install -D -m 0755 "$bin" "$prefix/bin/strata"
for name in mkcomposefs composefs-info; do
  ln -sfn strata "$prefix/bin/$name"
done
echo "installed $prefix/bin/strata (+ mkcomposefs, composefs-info)"
