#!/usr/bin/env bash
# Installs strata and its drop-in names as symlinks to the one binary:
#   PREFIX/bin/mkcomposefs, PREFIX/bin/composefs-info   (composefs C's tools)
#   SBINDIR/mount.composefs                              (so `mount -t composefs` and
#                                                          fstab lines run strata)
#   with --dracut: the dracut module contrib/dracut/90strata (strata setup-root in a
#   systemd initramfs; then `dracut --add strata -f`)
# Usage: contrib/install.sh [--dracut] [PREFIX]   (default /usr/local; SBINDIR default /sbin,
#        where util-linux mount(8) looks for helpers; binary from target/release)
set -euo pipefail
dracut=0
if [ "${1:-}" = --dracut ]; then dracut=1; shift; fi
prefix=${1:-/usr/local}
sbindir=${SBINDIR:-/sbin}
here=$(cd "$(dirname "$0")/.." && pwd)
bin="$here/target/release/strata"
[ -x "$bin" ] || { echo "install.sh: build first: cargo build --release" >&2; exit 1; }
install -D -m 0755 "$bin" "$prefix/bin/strata"
for name in mkcomposefs composefs-info; do
  ln -sfn strata "$prefix/bin/$name"
done
mkdir -p "$sbindir"
if [ -e "$sbindir/mount.composefs" ] && [ ! -L "$sbindir/mount.composefs" ]; then
  echo "install.sh: $sbindir/mount.composefs exists and is not a symlink (composefs C?); left alone" >&2
else
  ln -sfn "$prefix/bin/strata" "$sbindir/mount.composefs"
fi
if [ "$dracut" = 1 ]; then
  dest=${DRACUTMODDIR:-/usr/lib/dracut/modules.d}/90strata
  install -D -m 0755 "$here/contrib/dracut/90strata/module-setup.sh" "$dest/module-setup.sh"
  install -D -m 0644 "$here/contrib/dracut/90strata/strata-setup-root.service" "$dest/strata-setup-root.service"
  echo "installed dracut module $dest (build with: dracut --add strata -f)"
fi
echo "installed $prefix/bin/strata (+ mkcomposefs, composefs-info, $sbindir/mount.composefs)"
