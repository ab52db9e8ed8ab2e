# shellcheck shell=bash
# shellcheck disable=SC2034 # variables set here are read by vm-tests/run
# Booting a guest and reading its results from the serial console.

# KVM when it works, else TCG. /dev/kvm can exist on a CPU without
# virtualisation extensions (nested guests), where KVM guests never start: ask
# the CPU flags first, then boot a tiny probe guest once per host boot.
pick_accel() {
    case ${VM_TESTS_ACCEL:-auto} in
        kvm | tcg) ACCEL=$VM_TESTS_ACCEL; return ;;
        auto) ;;
        *) die "VM_TESTS_ACCEL must be auto, kvm or tcg" ;;
    esac
    ACCEL=tcg
    [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo || return 0
    local probe=$CACHE/kvm-probe.$(cat /proc/sys/kernel/random/boot_id)
    if [ ! -f "$probe" ]; then
        local r=$WORK/kvm-probe
        rm -rf "$r" && mkdir -p "$r/bin"
        cp "$BUSYBOX" "$r/bin/busybox"
        printf '#!/bin/busybox sh\n/bin/busybox echo STRATA-DONE\n/bin/busybox poweroff -f\n' >"$r/init"
        chmod 755 "$r/init"
        (cd "$r" && find . | cpio -o -H newc --quiet) >"$WORK/kvm-probe.cpio"
        if timeout 30 qemu-system-x86_64 -accel kvm -cpu host -m 256 -nodefaults -no-user-config \
            -display none -serial stdio -no-reboot -kernel "$VMLINUZ" -initrd "$WORK/kvm-probe.cpio" \
            -append "console=ttyS0 quiet panic=-1 rdinit=/init" </dev/null 2>&1 | grep -q STRATA-DONE; then
            echo kvm >"$probe"
        else
            echo tcg >"$probe"
        fi
    fi
    ACCEL=$(cat "$probe")
}

# boot_guest NAME KERNEL_ARGS...: boots with the initramfs and the disk; the
# console goes to $WORK/NAME.log, each line prefixed with seconds since qemu
# started. Sets GUEST_STATUS (ok|timeout|crash) and GUEST_SECONDS.
boot_guest() {
    local name=$1 logf=$WORK/$1.log cpu start now rc
    shift
    if [ "$ACCEL" = kvm ]; then
        cpu=(-accel kvm -cpu host)
    else
        # QEMU 7.2's TCG corrupts ~10% of these guests while CMPXCHG16B is visible
        cpu=(-accel tcg -cpu max,-cx16)
    fi
    local append="console=ttyS0 panic=-1 rdinit=/init $*"
    [ "${VM_TESTS_VERBOSE:-0}" = 1 ] || append="$append quiet"
    # a boot entry's own kernel, initrd and options (boot_default_entry)
    local kernel=${GUEST_KERNEL:-$VMLINUZ} initrd=${GUEST_INITRD:-$WORK/initramfs.cpio}
    [ -z "${GUEST_CMDLINE:-}" ] || append=$GUEST_CMDLINE
    start=${EPOCHREALTIME/./}
    set +e
    timeout --kill-after=5 "$TIMEOUT" qemu-system-x86_64 "${cpu[@]}" -M q35 -smp 2 -m 1024 \
        -nodefaults -no-user-config -display none -serial stdio -monitor none -no-reboot \
        -kernel "$kernel" -initrd "$initrd" -append "$append" \
        -drive "file=$WORK/disk.img,format=raw,if=virtio,cache=unsafe" </dev/null 2>&1 |
        while IFS= read -r line; do
            now=${EPOCHREALTIME/./}
            printf '%d.%03d %s\n' $(((now - start) / 1000000)) $(((now - start) / 1000 % 1000)) "${line%$'\r'}"
        done >"$logf"
    rc=${PIPESTATUS[0]}
    set -e
    now=${EPOCHREALTIME/./}
    GUEST_SECONDS=$(printf '%d.%03d' $(((now - start) / 1000000)) $(((now - start) / 1000 % 1000)))
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        GUEST_STATUS=timeout
    elif grep -qE 'Kernel panic|Oops|BUG: |double fault' "$logf"; then
        GUEST_STATUS=crash
    else
        GUEST_STATUS=ok
    fi
}

# report_guest NAME "EXPECTED CHECKS": prints the guest's results and timing;
# appends to PASSED/FAILED/FAILED_NAMES.
report_guest() {
    local name=$1 expected=$2 logf=$WORK/$1.log c line status detail done_at up
    done_at=$(awk '$2 == "STRATA-DONE" { print $1; exit }' "$logf")
    up=$(awk '$2 == "STRATA-DONE" { sub(/uptime=/, "", $3); print $3; exit }' "$logf")
    if [ -n "$done_at" ]; then
        log "guest '$name': boot-to-result ${done_at} s (guest uptime ${up} s), qemu exited after $GUEST_SECONDS s [$ACCEL, $KERNEL_VERSION]"
        TIMINGS+=("$name: boot-to-result ${done_at} s, guest uptime ${up} s")
    fi
    case $GUEST_STATUS in
        timeout)
            log "guest '$name': TIMEOUT after $TIMEOUT s (hung); last lines of $logf:"
            tail -5 "$logf" | sed 's/^/    /' >&2
            PROBLEMS+=("guest '$name' hung: no result within $TIMEOUT s (VM_TESTS_TIMEOUT)") ;;
        crash)
            log "guest '$name': kernel crash:"
            grep -E 'Kernel panic|Oops|BUG: |double fault|RIP:' "$logf" | head -5 | sed 's/^/    /' >&2
            PROBLEMS+=("guest '$name': kernel crash (see $logf)") ;;
    esac
    # results in the order the guest printed them, then expected ones it never printed
    while read -r line; do
        c=$(echo "$line" | awk '{ print $3 }')
        status=$(echo "$line" | awk '{ print $4 }')
        detail=$(echo "$line" | cut -d' ' -f5- | cut -c1-160)
        printf '  %-4s  %-30s %s\n' "$status" "$c" "$detail"
        if [ "$status" = PASS ]; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); FAILED_NAMES+=("$name/$c"); fi
    done < <(grep -E '^[0-9.]+ STRATA-CHECK ' "$logf" || true)
    for c in $expected; do
        grep -qE "^[0-9.]+ STRATA-CHECK $c " "$logf" && continue
        printf '  %-4s  %-30s %s\n' FAIL "$c" "no result (guest $GUEST_STATUS)"
        FAILED=$((FAILED + 1)); FAILED_NAMES+=("$name/$c")
    done
    if [ -z "$done_at" ] && [ "$GUEST_STATUS" = ok ]; then
        log "guest '$name' stopped without STRATA-DONE; see $logf"
        FAILED=$((FAILED + 1)); FAILED_NAMES+=("$name/finished")
    fi
}

# boot_default_entry NAME: boots the guest disk's default Boot Loader Specification
# entry the way a boot loader would. The disk's /boot is the boot partition: its
# loader/entries/*.conf are ordered as the specification says (entries with a
# sort-key first, by sort-key, then machine-id, then version descending; without
# one, by file name descending; versions compared with sort -V), and the first
# entry's linux, initrd and options are given to qemu as -kernel, -initrd and
# -append. Sets BOOTED_ENTRY; GUEST_STATUS=no-entry when there is none.
boot_default_entry() {
    local name=$1 b=$WORK/$1-boot f tab=$'\t' linux initrd options
    rm -rf "$b" && mkdir -p "$b"
    # the guests power off without unmounting: replay the journal, as the next mount would
    e2fsck -E journal_only -p "$WORK/disk.img" >/dev/null 2>&1 || true
    debugfs -R "rdump /boot $b" "$WORK/disk.img" >"$b/debugfs.log" 2>&1 || true
    BOOTED_ENTRY=
    for f in "$b"/boot/loader/entries/*.conf; do
        [ -f "$f" ] || continue
        awk -v f="${f##*/}" '
            $1 == "sort-key" { sk = $2 } $1 == "machine-id" { mid = $2 } $1 == "version" { v = $2 }
            END { printf "%d\t%s\t%s\t%s\t%s\n", (sk == "" ? 1 : 0), sk, mid, v, f }' "$f"
    done | LC_ALL=C sort -t"$tab" -k1,1n -k2,2 -k3,3 -k4,4Vr -k5,5Vr >"$b/order"
    BOOTED_ENTRY=$(head -n1 "$b/order" | cut -f5)
    if [ -z "$BOOTED_ENTRY" ]; then
        GUEST_STATUS=no-entry GUEST_SECONDS=0
        : >"$WORK/$name.log"
        return
    fi
    f=$b/boot/loader/entries/$BOOTED_ENTRY
    linux=$(awk '$1 == "linux" { print $2; exit }' "$f")
    initrd=$(awk '$1 == "initrd" { print $2; exit }' "$f")
    options=$(awk '$1 == "options" { sub(/^options[ \t]+/, ""); printf "%s ", $0 }' "$f")
    GUEST_KERNEL=$b/boot$linux GUEST_INITRD=$b/boot$initrd GUEST_CMDLINE=${options% } boot_guest "$name"
}
