# shellcheck shell=bash
# shellcheck disable=SC2034 # variables set here are read by vm-tests/run
# Distro kernel for the guests: a Debian linux-image package, unpacked with
# dpkg -x into the cache (never installed), plus the modules the guests load,
# decompressed (busybox insmod reads plain .ko only).
#
# Packages come through a private apt configuration (its own sources list,
# lists and archive cache under $CACHE/apt): the machine's /etc/apt and dpkg
# state are read for nothing but the mirror URL.

KERNEL_SUITE=${VM_TESTS_SUITE:-trixie}
KERNEL_FLAVOUR=${VM_TESTS_FLAVOUR:-cloud-amd64}
# Modules every guest loads (with their dependencies), if not built in.
GUEST_MODULES="virtio_pci virtio_blk crc32c_generic crc32c_intel ext4 erofs overlay"

# The first Debian archive URI in this machine's apt sources (one-line and
# deb822 formats); VM_TESTS_MIRROR overrides.
debian_mirror() {
    if [ -n "${VM_TESTS_MIRROR:-}" ]; then echo "$VM_TESTS_MIRROR"; return; fi
    local f uri
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        uri=$(awk '
            /^[[:space:]]*#/ { next }
            $1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:\/\//) { print $i; break } }
            $1 == "URIs:" { for (i = 2; i <= NF; i++) print $i }
        ' "$f" | grep -E '^https?://[^ ]*/debian/?$' | head -n1)
        if [ -n "$uri" ]; then echo "${uri%/}"; return; fi
    done
    die "no Debian mirror in this machine's apt sources; set VM_TESTS_MIRROR=URL"
}

APT_DIR=""
apt_private() {
    # apt-get/apt-cache with the private configuration
    local cmd=$1; shift
    "$cmd" -o Dir::Etc::sourcelist="$APT_DIR/sources.list" -o Dir::Etc::sourceparts=/dev/null \
        -o Dir::State::lists="$APT_DIR/lists" -o Dir::Cache="$APT_DIR/cache" \
        -o Dir::State::status="$APT_DIR/status" -o APT::Architecture=amd64 "$@"
}

apt_private_update() {
    local mirror
    mirror=$(debian_mirror)
    mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
    : >"$APT_DIR/status"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $KERNEL_SUITE main" \
        >"$APT_DIR/sources.list"
    log "apt-get update ($KERNEL_SUITE from $mirror, private lists in $APT_DIR)"
    apt_private apt-get update -q >"$APT_DIR/update.log" 2>&1 ||
        { tail -5 "$APT_DIR/update.log" >&2; die "apt-get update for $KERNEL_SUITE failed"; }
}

# Downloads (if not cached) and unpacks the kernel; sets KERNEL_DIR, KERNEL_VERSION, VMLINUZ.
fetch_kernel() {
    local link=$CACHE/kernel-$KERNEL_SUITE-$KERNEL_FLAVOUR pkg deb dir try
    APT_DIR=$CACHE/apt-$KERNEL_SUITE
    if [ ! -f "$link/.unpacked" ] || [ -n "${VM_TESTS_REFRESH:-}" ]; then
        for try in 1 2; do
            if [ "$try" = 2 ] || [ -n "${VM_TESTS_REFRESH:-}" ] || ! ls "$APT_DIR"/lists/*_Packages >/dev/null 2>&1; then
                apt_private_update
            fi
            # linux-image-FLAVOUR is a metapackage depending on linux-image-<version>-FLAVOUR
            pkg=$(apt_private apt-cache show "linux-image-$KERNEL_FLAVOUR" 2>/dev/null |
                awk '/^Depends:/ { if (match($0, /linux-image-[0-9][^ ,]*/)) { print substr($0, RSTART, RLENGTH); exit } }')
            [ -n "$pkg" ] || { [ "$try" = 1 ] && continue; die "linux-image-$KERNEL_FLAVOUR not found in $KERNEL_SUITE"; }
            mkdir -p "$CACHE/debs"
            deb=$(ls "$CACHE/debs/${pkg}_"*.deb 2>/dev/null | head -n1 || true)
            if [ -z "$deb" ]; then
                log "downloading $pkg"
                if ! (cd "$CACHE/debs" && apt_private apt-get download -q "$pkg" >"$APT_DIR/download.log" 2>&1); then
                    [ "$try" = 1 ] && { log "download failed; refreshing package lists"; continue; }
                    tail -5 "$APT_DIR/download.log" >&2; die "apt-get download $pkg failed"
                fi
                deb=$(ls "$CACHE/debs/${pkg}_"*.deb | head -n1)
            fi
            break
        done
        dir=$CACHE/kernels/$pkg
        rm -rf "$dir" && mkdir -p "$dir"
        dpkg-deb -x "$deb" "$dir" || die "dpkg-deb -x $deb failed"
        touch "$dir/.unpacked"
        ln -sfn "$dir" "$link"
    fi
    KERNEL_DIR=$(readlink -f "$link")
    VMLINUZ=$(ls "$KERNEL_DIR"/boot/vmlinuz-* 2>/dev/null | head -n1)
    [ -n "$VMLINUZ" ] || die "no vmlinuz in $KERNEL_DIR"
    KERNEL_VERSION=${VMLINUZ##*/vmlinuz-}
}

# modules_dir -> where modules.dep of the unpacked kernel lives
modules_dir() {
    if [ -d "$KERNEL_DIR/usr/lib/modules/$KERNEL_VERSION" ]; then
        echo "$KERNEL_DIR/usr/lib/modules/$KERNEL_VERSION"
    else
        echo "$KERNEL_DIR/lib/modules/$KERNEL_VERSION"
    fi
}

# Decompresses GUEST_MODULES and their dependencies into $CACHE/modules/<version>,
# with load-order in `order`. Sets MODULES_OUT.
prepare_modules() {
    local mdir out m
    mdir=$(modules_dir)
    out=$CACHE/modules/$KERNEL_VERSION
    MODULES_OUT=$out
    [ -f "$out/.done" ] && [ "$(cat "$out/.done")" = "$GUEST_MODULES" ] && return 0
    if [ ! -f "$mdir/modules.dep" ]; then
        # the package's postinst (not run: we only unpack) would have made it
        depmod -b "${mdir%/lib/modules/*}" "$KERNEL_VERSION" || die "depmod for $KERNEL_VERSION failed"
    fi
    rm -rf "$out" && mkdir -p "$out"
    # name -> path (names normalised to underscores), deps from modules.dep (transitive
    # already; load them depth first so each module comes after what it needs)
    awk -v want="$GUEST_MODULES" '
        function norm(p,   n) { n = p; sub(/.*\//, "", n); sub(/\.ko(\.(xz|zst|gz))?$/, "", n); gsub(/-/, "_", n); return n }
        FNR == NR { sub(/:$/, "", $1); builtin[norm($1)] = 1; next }
        {
            mod = $1; sub(/:$/, "", mod); n = norm(mod); path[n] = mod
            d = ""; for (i = 2; i <= NF; i++) d = d " " norm($i); deps[n] = d
        }
        function visit(n,   k, arr, c) {
            if (n in seen) return; seen[n] = 1
            c = split(deps[n], arr, " ")
            for (k = c; k >= 1; k--) visit(arr[k])
            print path[n]
        }
        END {
            c = split(want, w, " ")
            for (k = 1; k <= c; k++) {
                n = w[k]; gsub(/-/, "_", n)
                if (n in path) visit(n)
                else if (!(n in builtin)) print "MISSING " n > "/dev/stderr"
            }
        }' "$mdir/modules.builtin" "$mdir/modules.dep" >"$out/paths" 2>"$out/missing"
    : >"$out/order"
    while read -r m; do
        local base=${m##*/}
        base=${base%.xz}; base=${base%.zst}; base=${base%.gz}
        case $m in
            *.xz) xz -dc "$mdir/$m" >"$out/$base" ;;
            *.zst) zstd -qdc "$mdir/$m" >"$out/$base" ;;
            *.gz) gzip -dc "$mdir/$m" >"$out/$base" ;;
            *) cp "$mdir/$m" "$out/$base" ;;
        esac
        echo "$base" >>"$out/order"
    done <"$out/paths"
    echo "$GUEST_MODULES" >"$out/.done"
}
