#!/bin/bash
# dracut module: boot a strata composefs image as the root filesystem.
#
# With `composefs=<image id>` (or `composefs=?<image id>`, verity optional) on
# the kernel command line, the initramfs mounts the physical root on /sysroot
# as usual, then strata-setup-root.service runs `strata setup-root`, which
# mounts the image from /sysroot/composefs read-only as the new /sysroot
# (per-deployment /etc overlay and /var from /sysroot/state/deploy/<id>, the
# physical root at /sysroot/sysroot) before systemd switches root into it.
#
# Deployments (`strata deploy`) write Boot Loader Specification entries whose
# `options` line is the whole kernel command line: composefs=<image id>, the
# image's kargs.d arguments and the --karg ones (root=, rw, rd.*, systemd.*).
# The boot loader passes it; dracut's usual root= handling mounts the physical
# root on /sysroot (systemd-fstab-generator in the initrd), the unit below
# makes it writable if `ro` was given (the deployment's /etc and /var live on
# it), runs setup-root, and systemd switches root into the image. Images that
# ship this initramfs need nothing else: `dracut --add strata` inside the image
# build, output at /usr/lib/modules/VERSION/initramfs.img.
#
# Install: copy this directory to /usr/lib/dracut/modules.d/90strata
# (contrib/install.sh --dracut does it), then `dracut --add strata -f`.

check() {
    require_binaries strata || return 1
    # Only when asked for (--add strata or add_dracutmodules+=" strata ").
    return 255
}

depends() {
    echo systemd
}

installkernel() {
    # erofs + overlay for the image, loop for kernels without file-backed EROFS
    hostonly='' instmods erofs overlay loop
}

# moddir, systemdsystemunitdir, initdir and SYSTEMCTL come from dracut.
# shellcheck disable=SC2154
install() {
    inst_binary strata
    inst_multiple -o mount
    inst_simple "$moddir/strata-setup-root.service" \
        "$systemdsystemunitdir/strata-setup-root.service"
    $SYSTEMCTL -q --root "$initdir" add-wants initrd-root-fs.target strata-setup-root.service
}
