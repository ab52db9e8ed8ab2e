# shellcheck shell=bash
# shellcheck disable=SC2034 # variables set here are read by vm-tests/run
# Host-side builds: the strata binary for the guest, the test payload (trees,
# an OCI layout, expected hashes, the root image tree) and the initramfs.

MUSL=x86_64-unknown-linux-musl

# Builds strata for the guest; sets STRATA_BIN and STRATA_KIND (musl|glibc).
build_strata() {
    local cargo_out mode=${VM_TESTS_BUILD:-auto}
    cargo_out=$WORK/cargo.log
    case $mode in auto | musl | glibc) ;; *) die "VM_TESTS_BUILD must be auto, musl or glibc" ;; esac
    if [ "$mode" != glibc ] && ! rustup target list --installed 2>/dev/null | grep -qx "$MUSL" && command -v rustup >/dev/null; then
        log "rustup target add $MUSL"
        timeout 300 rustup target add "$MUSL" >"$cargo_out" 2>&1 || log "note: cannot add $MUSL; using the glibc build"
    fi
    if [ "$mode" != glibc ] && rustup target list --installed 2>/dev/null | grep -qx "$MUSL" &&
        command -v musl-gcc >/dev/null; then
        log "building strata (static, $MUSL)"
        # zstd-sys compiles C: musl-gcc. No LTO and no debug info: a faster build
        # for a binary that runs a handful of small operations.
        if (cd "$SRC" && CC_x86_64_unknown_linux_musl=musl-gcc CARGO_PROFILE_RELEASE_LTO=off \
            CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
            cargo build -q --release --target "$MUSL" --bin strata) >"$cargo_out" 2>&1; then
            STRATA_BIN=${CARGO_TARGET_DIR:-$SRC/target}/$MUSL/release/strata STRATA_KIND=musl
            return 0
        fi
        tail -5 "$cargo_out" >&2
        log "note: musl build failed; using the glibc build"
    fi
    [ "$mode" != musl ] || die "VM_TESTS_BUILD=musl, but the $MUSL build is not possible here (see $cargo_out)"
    log "building strata (glibc; its libraries go into the initramfs)"
    (cd "$SRC" && cargo build -q --release --bin strata) >"$cargo_out" 2>&1 ||
        { tail -20 "$cargo_out" >&2; die "cargo build failed"; }
    STRATA_BIN=${CARGO_TARGET_DIR:-$SRC/target}/release/strata STRATA_KIND=glibc
}

# install_bin SRC ROOT DEST: a binary and, if dynamic, every library ldd names
install_bin() {
    local src=$1 root=$2 dest=$3 lib
    install -D -m755 "$src" "$root$dest"
    if ldd "$src" >/dev/null 2>&1; then
        for lib in $(ldd "$src" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
            [ -e "$root$lib" ] || install -D -m755 "$(readlink -f "$lib")" "$root$lib"
        done
    fi
}

# A small OCI image layout: two layers (gzip, then plain tar, the second
# replacing a file and deleting one with a whiteout), config, manifest, index.
make_oci_layout() {
    local out=$1 src=$2 l1 l2 d1 d2 s1 s2 z1 cfgd man mand
    rm -rf "$out" && mkdir -p "$out/blobs/sha256"
    blob() { # FILE -> digest hex; moves it into blobs/
        local h
        h=$(sha256sum "$1" | cut -d' ' -f1)
        mv "$1" "$out/blobs/sha256/$h"
        echo "$h"
    }
    tarit() { tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1700000000 -C "$1" -cf - . ; }
    tarit "$src/layer1" >"$out/l1.tar"
    d1=$(sha256sum "$out/l1.tar" | cut -d' ' -f1)
    gzip -n -6 <"$out/l1.tar" >"$out/l1.tar.gz" && rm "$out/l1.tar"
    s1=$(stat -c %s "$out/l1.tar.gz"); l1=$(blob "$out/l1.tar.gz")
    tarit "$src/layer2" >"$out/l2.tar"
    s2=$(stat -c %s "$out/l2.tar"); d2=$(sha256sum "$out/l2.tar" | cut -d' ' -f1); l2=$(blob "$out/l2.tar")
    printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s","sha256:%s"]}}' \
        "$d1" "$d2" >"$out/config.json"
    z1=$(stat -c %s "$out/config.json"); cfgd=$(blob "$out/config.json")
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s},{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
        "$cfgd" "$z1" "$l1" "$s1" "$l2" "$s2" >"$out/manifest.json"
    man=$(stat -c %s "$out/manifest.json"); mand=$(blob "$out/manifest.json")
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' \
        "$mand" "$man" >"$out/index.json"
    echo '{"imageLayoutVersion":"1.0.0"}' >"$out/oci-layout"
}

# sums DIR OUT: sha256sum -c list of every regular file under DIR (relative paths)
sums() { (cd "$1" && find . -type f | LC_ALL=C sort | xargs -r sha256sum) >"$2"; }

build_payload() {
    local p=$WORK/payload src=$WORK/payload-src a
    rm -rf "$p" "$src" && mkdir -p "$p" "$src"

    # tree: create-image and mount checks (small inline files, objects, one big file, links)
    mkdir -p "$p/tree/etc" "$p/tree/usr/share/doc" "$p/tree/data/deep/er"
    printf 'NAME=tree\n' >"$p/tree/etc/os-release"
    printf 'tiny\n' >"$p/tree/etc/inline"
    seq 1 2000 >"$p/tree/usr/share/doc/numbers.txt"
    head -c 3000000 /dev/urandom >"$p/tree/data/random.bin"
    for a in 1 2 3 4 5; do printf 'file %s of a few, long enough to be an object: %0100d\n' "$a" "$a" >"$p/tree/data/deep/er/f$a"; done
    cp "$p/tree/data/deep/er/f1" "$p/tree/data/same-as-f1"
    ln -s ../etc/os-release "$p/tree/data/link"
    sums "$p/tree" "$p/tree.sha256"

    # victim: an image of its own for the tampering checks
    mkdir -p "$p/victim"
    head -c 20000 /dev/urandom >"$p/victim/replaced.bin"
    head -c 20000 /dev/urandom >"$p/victim/mismatch.bin"
    printf 'this file stays intact: %0200d\n' 7 >"$p/victim/untouched.txt"

    # OCI layout: layer 1 a small tree, layer 2 changes one file and whiteouts another
    mkdir -p "$src/layer1/etc" "$src/layer1/usr/bin" "$src/layer1/var/lib" "$src/layer2/etc" "$src/flat"
    printf 'ID=oci-test\n' >"$src/layer1/etc/os-release"
    head -c 200000 /dev/urandom >"$src/layer1/usr/bin/tool"
    seq 1 5000 >"$src/layer1/var/lib/state"
    printf 'removed by layer 2\n' >"$src/layer1/etc/gone"
    printf 'ID=oci-test\nVERSION=2\n%0100d\n' 2 >"$src/layer2/etc/os-release"
    : >"$src/layer2/etc/.wh.gone"
    make_oci_layout "$p/oci" "$src"
    cp -a "$src/layer1/." "$src/flat/" && rm "$src/flat/etc/gone" && cp "$src/layer2/etc/os-release" "$src/flat/etc/"
    sums "$src/flat" "$p/oci.sha256"

    # rootfs: the image the second guest boots into
    local r=$p/rootfs
    mkdir -p "$r"/{bin,sbin,etc,usr/share/strata-test,var,sysroot,proc,sys,dev,run,tmp}
    cp "$BUSYBOX" "$r/bin/busybox"
    for a in $("$BUSYBOX" --list); do
        case $a in busybox | init) ;; *) [ -e "$r/bin/$a" ] || ln -s busybox "$r/bin/$a" ;; esac
    done
    install -m755 "$HERE/guest/root-init" "$r/sbin/init"
    printf 'NAME="strata VM test root"\nID=strata-vm-test\n' >"$r/etc/os-release"
    printf 'strata-vm\n' >"$r/etc/hostname"
    head -c 100000 /dev/urandom >"$r/usr/share/strata-test/data.bin"
}

# The initramfs: busybox, strata (+ mount.composefs), fsverity, modules, scripts, payload.
build_initramfs() {
    local r=$WORK/initramfs
    rm -rf "$r" && mkdir -p "$r"/{bin,sbin,lib/modules,etc}
    cp "$BUSYBOX" "$r/bin/busybox"
    install_bin "$STRATA_BIN" "$r" /bin/strata
    ln -s ../bin/strata "$r/sbin/mount.composefs"
    install_bin "$(command -v fsverity)" "$r" /bin/fsverity
    install -m755 "$HERE/guest/init" "$r/init"
    install -m644 "$HERE/guest/checks.sh" "$r/checks.sh"
    install -m755 "$HERE/guest/deploy-init" "$r/deploy-init"
    local m
    while read -r m; do cp "$MODULES_OUT/$m" "$r/lib/modules/"; done <"$MODULES_OUT/order"
    cp "$MODULES_OUT/order" "$r/lib/modules/order"
    cp -a "$WORK/payload" "$r/payload"
    # uncompressed: the kernel copies it faster than it would decompress under TCG
    (cd "$r" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) >"$WORK/initramfs.cpio"
}

# The guests' disk: ext4 with the verity feature, empty (the first guest fills it).
make_disk() {
    rm -f "$WORK/disk.img"
    truncate -s 512M "$WORK/disk.img"
    mkfs.ext4 -q -F -O verity -b 4096 -L strata-vm "$WORK/disk.img"
}

# The initramfs that deployed images ship at /usr/lib/modules/VERSION/initramfs.img:
# the same /init (busybox, strata, modules), without the checks and the payload.
build_boot_initramfs() {
    local r=$WORK/boot-initramfs m
    rm -rf "$r" && mkdir -p "$r"/{bin,sbin,lib/modules,etc}
    cp "$BUSYBOX" "$r/bin/busybox"
    install_bin "$STRATA_BIN" "$r" /bin/strata
    ln -s ../bin/strata "$r/sbin/mount.composefs"
    install -m755 "$HERE/guest/init" "$r/init"
    while read -r m; do cp "$MODULES_OUT/$m" "$r/lib/modules/"; done <"$MODULES_OUT/order"
    cp "$MODULES_OUT/order" "$r/lib/modules/order"
    (cd "$r" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) >"$WORK/boot-initramfs.cpio"
}

# Three bootable images A, B, C for the deployment guests, as one OCI layout
# (payload/deploy-oci, tags a, b, c) sharing a base layer: busybox, strata, the
# guests' /sbin/init (guest/deploy-init), the kernel and initramfs at
# /usr/lib/modules/$KERNEL_VERSION/ and the kernel arguments in
# /usr/lib/bootc/kargs.d. Each image adds a small layer of its own /etc:
#   test.conf  the same in A, B and C (the guest changes it: the user's wins)
#   hostname   changed by B and C (the guest rewrites it unchanged: the image's wins)
#   motd       changed by B and C; b-new only in B and C
build_deploy_images() {
    local out=$WORK/payload/deploy-oci src=$WORK/deploy-src base a blob_base diff_base size_base
    rm -rf "$out" "$src" && mkdir -p "$out/blobs/sha256" "$src"
    base=$src/base
    mkdir -p "$base"/{bin,sbin,etc,usr/share/deploy-test,var,sysroot,proc,sys,dev,run,tmp,boot}
    cp "$BUSYBOX" "$base/bin/busybox"
    for a in $("$BUSYBOX" --list); do
        case $a in busybox | init) ;; *) [ -e "$base/bin/$a" ] || ln -s busybox "$base/bin/$a" ;; esac
    done
    install -m755 "$STRATA_BIN" "$base/bin/strata"
    install -m755 "$HERE/guest/deploy-init" "$base/sbin/init"
    mkdir -p "$base/usr/lib/modules/$KERNEL_VERSION" "$base/usr/lib/bootc/kargs.d"
    cp "$VMLINUZ" "$base/usr/lib/modules/$KERNEL_VERSION/vmlinuz"
    cp "$WORK/boot-initramfs.cpio" "$base/usr/lib/modules/$KERNEL_VERSION/initramfs.img"
    printf 'kargs = ["console=ttyS0", "panic=-1", "rdinit=/init", "strata.vmtest=root"]\n' \
        >"$base/usr/lib/bootc/kargs.d/10-vmtest.toml"
    printf 'kargs = ["quiet"]\nmatch-architectures = ["x86_64"]\n' >"$base/usr/lib/bootc/kargs.d/20-quiet.toml"
    printf 'kargs = ["strata.never=1"]\nmatch-architectures = ["s390x"]\n' >"$base/usr/lib/bootc/kargs.d/30-s390x.toml"

    tarit() { tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1700000000 -C "$1" -cf - . ; }
    blob() { # FILE -> digest hex; moves it into blobs/
        local h
        h=$(sha256sum "$1" | cut -d' ' -f1)
        mv "$1" "$out/blobs/sha256/$h"
        echo "$h"
    }
    tarit "$base" >"$out/base.tar"
    diff_base=$(sha256sum "$out/base.tar" | cut -d' ' -f1)
    size_base=$(stat -c %s "$out/base.tar")
    blob_base=$(blob "$out/base.tar")
    local manifests="" v l d s cfg cz m mz
    for v in a b c; do
        l=$src/$v
        mkdir -p "$l/etc" "$l/usr/share/deploy-test"
        local V=${v^^}
        printf 'NAME="strata deploy test"\nPRETTY_NAME="strata deploy test %s"\nID=strata-deploy-test\nVERSION_ID=%s\n' "$V" "$V" >"$l/etc/os-release"
        echo "$V" >"$l/usr/share/deploy-test/version"
        printf 'setting=base\n' >"$l/etc/test.conf"
        if [ "$v" = a ]; then
            printf 'host-a\n' >"$l/etc/hostname"
            printf 'motd of A\n' >"$l/etc/motd"
        else
            printf 'host-%s\n' "$v" >"$l/etc/hostname"
            printf 'motd of %s\n' "$V" >"$l/etc/motd"
            printf 'new in %s\n' "$V" >"$l/etc/b-new"
        fi
        tarit "$l" >"$out/$v.tar"
        d=$(sha256sum "$out/$v.tar" | cut -d' ' -f1)
        s=$(stat -c %s "$out/$v.tar")
        l=$(blob "$out/$v.tar")
        printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/sbin/init"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s","sha256:%s"]}}' \
            "$diff_base" "$d" >"$out/config.json"
        cz=$(stat -c %s "$out/config.json"); cfg=$(blob "$out/config.json")
        printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s},{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
            "$cfg" "$cz" "$blob_base" "$size_base" "$l" "$s" >"$out/manifest.json"
        mz=$(stat -c %s "$out/manifest.json"); m=$(blob "$out/manifest.json")
        manifests="$manifests${manifests:+,}{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$m\",\"size\":$mz,\"annotations\":{\"org.opencontainers.image.ref.name\":\"$v\"}}"
    done
    printf '{"schemaVersion":2,"manifests":[%s]}' "$manifests" >"$out/index.json"
    echo '{"imageLayoutVersion":"1.0.0"}' >"$out/oci-layout"
}
