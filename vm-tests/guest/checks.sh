#!/bin/sh
# Guest checks of strata's fs-verity paths (run by /init in strata.vmtest=checks).
# The ext4 disk (mkfs.ext4 -O verity) is mounted at /sysroot; the repository goes
# to /sysroot/composefs, where `strata setup-root` expects it on the next boot.
# /payload holds the trees, the OCI layout and the expected file hashes (made on
# the host). fsverity(1) from fsverity-utils is the independent oracle for the
# kernel's measurement.
R=/sysroot/composefs
S="strata --repo $R"
P=/payload
WRONG=0000000000000000000000000000000000000000000000000000000000000001

check() { echo "STRATA-CHECK $1 $2 ${3:-}"; }
oneline() { tr '\n' ' ' | cut -c1-300; }

# objects_verified: every file under objects/ has fs-verity and the kernel's
# digest equals its name. Prints "ok N" or the first offender.
objects_verified() {
    n=0
    for f in "$R"/objects/*/*; do
        [ -f "$f" ] || continue
        name=$(basename "$(dirname "$f")")$(basename "$f")
        got=$(fsverity measure "$f" 2>&1) || { echo "no verity on ${f#$R/}: $got"; return 1; }
        got=${got%% *}
        [ "$got" = "sha256:$name" ] || { echo "${f#$R/}: kernel digest $got"; return 1; }
        n=$((n + 1))
    done
    [ $n -gt 0 ] || { echo "no objects"; return 1; }
    echo "ok $n"
}

# content_ok DIR SUMS: files under DIR have the hashes listed in SUMS
content_ok() { (cd "$1" && sha256sum -c "$2" >/tmp/sum.out 2>&1) || { grep -v ': OK$' /tmp/sum.out | head -3; return 1; }; }

# the object holding FILE's contents (userspace digest of the source file)
object_of() {
    d=$(strata composefs-info measure-file "$1") || return 1
    d=${d#sha256:}
    echo "$R/objects/$(echo "$d" | cut -c1-2)/$(echo "$d" | cut -c3-)"
}

# ---------------------------------------------------------------- init
out=$($S init --require-verity 2>&1)
case $out in
    *"fs-verity enforced"*) check init-verity-enforced PASS "$out" ;;
    *) check init-verity-enforced FAIL "$(echo "$out" | oneline)" ;;
esac

# ---------------------------------------------------------------- create-image
if ID=$($S create-image $P/tree tree 2>/tmp/err); then
    if [ "$TAMPER" = object-digest ]; then
        # a real object under a name that is not its digest
        f=$(ls "$R"/objects/*/* | head -n1)
        mkdir -p "$R/objects/ff"
        cat "$f" >"$R/objects/ff/$(echo "$WRONG" | cut -c3-)"
        fsverity enable "$R/objects/ff/$(echo "$WRONG" | cut -c3-)"
        echo "STRATA-INFO tamper=object-digest: copied ${f#$R/} to objects/ff/$(echo "$WRONG" | cut -c3-)"
    fi
    imgd=$(fsverity measure "$R/images/$ID" 2>&1)
    if r=$(objects_verified) && [ "${imgd%% *}" = "sha256:$ID" ]; then
        check create-image-objects-verity PASS "image $ID, ${r#ok } objects, all measured digests = names"
    else
        check create-image-objects-verity FAIL "$r; image: $imgd"
    fi
else
    check create-image-objects-verity FAIL "create-image: $(oneline </tmp/err)"
fi

# ---------------------------------------------------------------- pull
before=$(ls "$R"/objects/*/* | wc -l)
if PID=$($S pull oci:$P/oci:latest pulled 2>/tmp/err); then
    after=$(ls "$R"/objects/*/* | wc -l)
    if r=$(objects_verified) && [ "$after" -gt "$before" ]; then
        check pull-objects-verity PASS "image $PID, $((after - before)) new objects, ${r#ok } objects verified"
    else
        check pull-objects-verity FAIL "$r (objects before $before, after $after)"
    fi
else
    check pull-objects-verity FAIL "pull: $(oneline </tmp/err)"
fi

# ---------------------------------------------------------------- fsck (healthy)
if out=$($S fsck 2>&1); then check fsck-clean PASS "$(echo "$out" | oneline)"
else check fsck-clean FAIL "$(echo "$out" | oneline)"; fi

# ---------------------------------------------------------------- strata mount --verity require
mkdir -p /mnt/tree /mnt/pulled /mnt/wrong /mnt/victim /mnt/helper /mnt/helper-wrong
if out=$($S mount tree /mnt/tree --verity require 2>&1); then
    opts=$(awk '$2 == "/mnt/tree" { print $4 }' /proc/mounts)
    if bad=$(content_ok /mnt/tree $P/tree.sha256) && echo "$opts" | grep -q 'verity=require'; then
        check mount-verity-require PASS "$opts"
    else
        check mount-verity-require FAIL "content: $bad; options: $opts"
    fi
    umount /mnt/tree
else
    check mount-verity-require FAIL "$(echo "$out" | oneline)"
fi
if out=$($S mount pulled /mnt/pulled --verity require 2>&1); then
    if bad=$(content_ok /mnt/pulled $P/oci.sha256) && [ ! -e /mnt/pulled/etc/gone ]; then check mount-pulled-image PASS "$(wc -l <$P/oci.sha256) files as in the layers (whiteout applied)"
    else check mount-pulled-image FAIL "content: $bad"; fi
    umount /mnt/pulled
else
    check mount-pulled-image FAIL "$(echo "$out" | oneline)"
fi

# ---------------------------------------------------------------- --digest
if out=$($S mount tree /mnt/wrong --verity require --digest "$WRONG" 2>&1); then
    check mount-wrong-digest-refused FAIL "mounted with a wrong --digest"
    umount /mnt/wrong
elif ! echo "$out" | grep -qi digest; then
    check mount-wrong-digest-refused FAIL "not refused for the digest: $(echo "$out" | oneline)"
elif ok=$($S mount tree /mnt/wrong --verity require --digest "$ID" 2>&1); then
    check mount-wrong-digest-refused PASS "$(echo "$out" | oneline)"
    umount /mnt/wrong
else
    check mount-wrong-digest-refused FAIL "right digest refused too: $(echo "$ok" | oneline)"
fi

# ---------------------------------------------------------------- mount.composefs
HELPER_OK=
if out=$(mount.composefs "$R/images/$ID" /mnt/helper -o "basedir=$R/objects,digest=$ID" 2>&1); then
    opts=$(awk '$2 == "/mnt/helper" { print $4 }' /proc/mounts)
    if bad=$(content_ok /mnt/helper $P/tree.sha256); then check mount-composefs-helper PASS "$opts"; HELPER_OK=1
    else check mount-composefs-helper FAIL "content: $bad"; fi
    umount /mnt/helper
else
    check mount-composefs-helper FAIL "$(echo "$out" | oneline)"
fi
# refused for the digest's sake: the same command with the right digest works, and the error says why
if out=$(mount.composefs "$R/images/$ID" /mnt/helper-wrong -o "basedir=$R/objects,digest=$WRONG" 2>&1); then
    check mount-composefs-wrong-digest FAIL "mounted with a wrong digest"
    umount /mnt/helper-wrong
elif [ -n "$HELPER_OK" ] && echo "$out" | grep -qi digest; then
    check mount-composefs-wrong-digest PASS "$(echo "$out" | oneline)"
else
    check mount-composefs-wrong-digest FAIL "not refused for the digest: $(echo "$out" | oneline)"
fi

# ---------------------------------------------------------------- the root image for the next boot
if RID=$($S create-image $P/rootfs root 2>/tmp/err); then
    echo "STRATA-ROOT-IMAGE $RID"
    check root-image-created PASS "$RID"
else
    check root-image-created FAIL "$(oneline </tmp/err)"
fi

# ---------------------------------------------------------------- tampering (last: it damages the repository)
# An image of its own, so that nothing else uses the objects damaged here.
if $S create-image $P/victim victim >/dev/null 2>/tmp/err; then
    # 1. an object replaced by a file without fs-verity (same name, same bytes)
    obj=$(object_of $P/victim/replaced.bin)
    cp "$obj" /tmp/plain && rm -f "$obj" && cp /tmp/plain "$obj"
    if out=$($S mount victim /mnt/victim --verity require 2>&1); then
        good=$(sha256sum </mnt/victim/untouched.txt | cut -d' ' -f1)
        if cat /mnt/victim/replaced.bin >/dev/null 2>/tmp/err; then
            check verity-replaced-object-eio FAIL "a non-verity object was readable"
        elif grep -q 'Input/output error' /tmp/err && [ "$good" = "$(sha256sum <$P/victim/untouched.txt | cut -d' ' -f1)" ]; then
            check verity-replaced-object-eio PASS "$(oneline </tmp/err)"
        else
            check verity-replaced-object-eio FAIL "$(oneline </tmp/err); untouched file: $good"
        fi
        umount /mnt/victim
    else
        check verity-replaced-object-eio FAIL "mount: $(echo "$out" | oneline)"
    fi
    # 2. an object with the right bytes whose fs-verity digest is still not its name:
    #    verity enabled with a salt (the userspace hash of the bytes matches, the kernel's does not)
    obj=$(object_of $P/victim/mismatch.bin)
    rel=${obj#$R/}
    cp "$obj" "$obj.tmp" && fsverity enable --salt=5a "$obj.tmp" >/dev/null && mv "$obj.tmp" "$obj"
    if out=$($S fsck 2>&1); then
        check fsck-verity-mismatch FAIL "fsck passed: $(echo "$out" | oneline)"
    elif echo "$out" | grep -q "$rel"; then
        check fsck-verity-mismatch PASS "$(echo "$out" | grep "$rel" | oneline)"
    else
        check fsck-verity-mismatch FAIL "fsck did not name $rel: $(echo "$out" | oneline)"
    fi
else
    check verity-replaced-object-eio FAIL "create-image victim: $(oneline </tmp/err)"
    check fsck-verity-mismatch FAIL "create-image victim failed"
fi
