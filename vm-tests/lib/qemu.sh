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
    start=${EPOCHREALTIME/./}
    set +e
    timeout --kill-after=5 "$TIMEOUT" qemu-system-x86_64 "${cpu[@]}" -M q35 -smp 2 -m 1024 \
        -nodefaults -no-user-config -display none -serial stdio -monitor none -no-reboot \
        -kernel "$VMLINUZ" -initrd "$WORK/initramfs.cpio" -append "$append" \
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
