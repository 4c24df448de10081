#!/bin/bash
# vhost-user-blk end-to-end test: a real Linux guest (QEMU TCG) drives the backend.
#
#   Tests/E2E/blk-e2e.sh                     BACKEND=vdevd (default), VDEVD=.build/debug/vdevd
#   BACKEND=qsd Tests/E2E/blk-e2e.sh         reference: qemu-storage-daemon 7.2
#
# Environment: BACKEND=vdevd|qsd, VDEVD=path, VDEVD_ARGS='--pollers 2 ...' (extra daemon flags),
#              DISK0_KEYS=',engine=aio' (extra keys for disk0's export), KEEP_WORK=1 (keep the work dir even on success),
#              GUEST_TIMEOUT=seconds (default 150), VERBOSE=1 (echo the guest console live).
# Exit status: 0 all checks passed, 1 a check failed, 2 setup error.
#
# Disks: disk0 = 64 MiB random image (vda, 2 queues, writable), ro0 = 16 MiB random image (vdb,
# read-only). Checks (guest side G, host side H):
#   G size of vda/vdb            G/H pattern written at 1 MiB+4 KiB, read back, found in the file
#   G preexisting data readable  G fio --verify randrw (libaio, 2 jobs pinned to the 2 CPUs)
#   G/H blkdiscard punches a hole (host du shrinks)
#   G/H read-only disk refuses writes, host file unchanged
#   G 2 mq dirs; I/O pinned to each CPU completes on that CPU's virtqueue (per-vq MSI-X irq counts)
#   G cache_type can be switched to "write back" (CONFIG_WCE); then a flush completes (stat field 16)
#   H backend still alive after the guest is done; vdevd: both queues, a flush and a discard reached it
#     (its per-queue totals logged at exit), SIGTERM exits 0 and removes the sockets
set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BACKEND=${BACKEND:-vdevd}
VDEVD=${VDEVD:-.build/debug/vdevd}
GUEST_TIMEOUT=${GUEST_TIMEOUT:-150}
cd "$REPO"

T0=$(date +%s)
CHECKS=()       # "PASS|FAIL|SKIP|INFO name detail"
FAILED=0
check() {   # check STATUS NAME DETAIL...
    local st=$1 name=$2; shift 2
    CHECKS+=("$(printf '%-4s %-26s %s' "$st" "$name" "$*")")
    if [ "$st" = FAIL ]; then FAILED=1; fi
    echo "blk-e2e: $st $name $*"
    return 0
}
die() { echo "blk-e2e: SETUP ERROR: $*" >&2; exit 2; }

case "$BACKEND" in
    vdevd) [ -x "$VDEVD" ] || die "VDEVD=$VDEVD not executable (build it, or BACKEND=qsd)" ;;
    qsd) command -v qemu-storage-daemon >/dev/null || die "qemu-storage-daemon missing (scripts/guest-image.sh --install-deps)" ;;
    *) die "BACKEND must be vdevd or qsd" ;;
esac
for t in qemu-system-x86_64 fio sha256sum du dd stat; do
    command -v $t >/dev/null || die "$t missing (scripts/guest-image.sh --install-deps)"
done
# shellcheck source=../../scripts/guest-image.sh
source "$REPO/scripts/guest-image.sh" || die "guest image build failed"

# Work dir: visible to the guest over 9p, so not under /tmp.
mkdir -p "$REPO/.cache"
# shellcheck source=../../scripts/e2e-workdir.sh
source "$REPO/scripts/e2e-workdir.sh"
WORK=$(e2e_workdir blk)
BPID=
cleanup() {
    if [ -n "$BPID" ] && kill -0 "$BPID" 2>/dev/null; then
        kill "$BPID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$BPID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$BPID" 2>/dev/null
    fi
    if [ "$FAILED" = 0 ] && [ "${KEEP_WORK:-0}" != 1 ]; then rm -rf "$WORK"; else echo "blk-e2e: work dir kept: $WORK"; fi
}
trap cleanup EXIT
trap 'exit 2' INT TERM

IMG=$WORK/disk0.img IMG2=$WORK/ro0.img SOCK=$WORK/disk0.sock SOCK2=$WORK/ro0.sock
BLOG=$WORK/backend.log CLOG=$WORK/console.log
MiB=$((1024 * 1024))
IMG_SIZE=$((64 * MiB)) IMG2_SIZE=$((16 * MiB))
PAT_SEEK=257 PAT_BLOCKS=16          # 4 KiB blocks: offset 1 MiB + 4 KiB, 64 KiB long
FIO_OFF=$((8 * MiB)) FIO_SIZE=$((4 * MiB))   # per job; 2 jobs -> 8..16 MiB
DISC_OFF=$((40 * MiB)) DISC_LEN=$((16 * MiB))
FLUSH_OFF_BLOCKS=$((60 * 256))      # 4 KiB blocks: 60 MiB

# --- images: fully allocated random data, so the discard must free blocks -----------------------
dd if=/dev/urandom of="$IMG" bs=1M count=$((IMG_SIZE / MiB)) status=none || die "dd $IMG"
dd if=/dev/urandom of="$IMG2" bs=1M count=$((IMG2_SIZE / MiB)) status=none || die "dd $IMG2"
dd if=/dev/urandom of="$WORK/pattern.bin" bs=4096 count=$PAT_BLOCKS status=none
sync "$IMG" "$IMG2"
PAT_SHA=$(sha256sum < "$WORK/pattern.bin" | cut -d' ' -f1)
HEAD_SHA=$(dd if="$IMG" bs=1M count=1 status=none | sha256sum | cut -d' ' -f1)
IMG2_SHA=$(sha256sum < "$IMG2" | cut -d' ' -f1)
DU_BEFORE=$(du -k "$IMG" | cut -f1)

# --- backend -------------------------------------------------------------------------------------
if [ "$BACKEND" = qsd ]; then
    qemu-storage-daemon \
        --blockdev "driver=file,node-name=disk0,filename=$IMG,discard=unmap" \
        --blockdev "driver=file,node-name=ro0,filename=$IMG2,read-only=on" \
        --export "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=$SOCK,writable=on,num-queues=2" \
        --export "type=vhost-user-blk,id=exp1,node-name=ro0,addr.type=unix,addr.path=$SOCK2,writable=off" \
        > "$BLOG" 2>&1 &
    BPID=$!
else
    # shellcheck disable=SC2086
    "$VDEVD" ${VDEVD_ARGS:-} \
        --export "vhost-user-blk,id=disk0,path=$IMG,socket=$SOCK,num-queues=2${DISK0_KEYS:-}" \
        --export "vhost-user-blk,id=ro0,path=$IMG2,socket=$SOCK2,readonly=on" \
        > "$BLOG" 2>&1 &
    BPID=$!
fi
for _ in $(seq 100); do
    [ -S "$SOCK" ] && [ -S "$SOCK2" ] && break
    kill -0 "$BPID" 2>/dev/null || break
    sleep 0.1
done
if ! [ -S "$SOCK" ] || ! [ -S "$SOCK2" ]; then
    cat "$BLOG" >&2; FAILED=1; die "backend ($BACKEND) did not create its sockets"
fi

# --- guest script --------------------------------------------------------------------------------
LDSO=$(realpath /lib64/ld-linux-x86-64.so.2)
LIBPATH=""
for d in /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu/ceph; do
    [ -d "$d" ] && LIBPATH="$LIBPATH${LIBPATH:+:}/host$(realpath "$d")"
done
cat > "$WORK/guest-env.sh" <<EOF
BACKEND='$BACKEND'
G_WORK='/host$WORK'
IMG_SIZE=$IMG_SIZE IMG2_SIZE=$IMG2_SIZE
PAT_SHA=$PAT_SHA PAT_SEEK=$PAT_SEEK PAT_BLOCKS=$PAT_BLOCKS HEAD_SHA=$HEAD_SHA IMG2_SHA=$IMG2_SHA
FIO_OFF=$FIO_OFF FIO_SIZE=$FIO_SIZE DISC_OFF=$DISC_OFF DISC_LEN=$DISC_LEN FLUSH_OFF_BLOCKS=$FLUSH_OFF_BLOCKS
HOSTRUN='/host$LDSO --library-path $LIBPATH'
EOF

cat > "$WORK/guest.sh" <<'GUEST'
# Runs inside the guest (busybox sh), cwd = the work dir seen over 9p.
. ./guest-env.sh
FAILS=""
ck() {  # ck PASS|FAIL|SKIP name detail
    echo "CHECK $1 $2 ${3:-}"
    if [ "$1" = FAIL ]; then FAILS="$FAILS $2"; fi
    return 0
}
info() { echo "INFO $*"; }
fio() { $HOSTRUN /host/usr/bin/fio "$@"; }
statf() { awk -v f="$2" '{print $f}' "/sys/block/$1/stat"; }

# -- devices and sizes
for d in vda vdb; do [ -b /dev/$d ] || { ck FAIL dev-$d "no /dev/$d"; }; done
s=$(blockdev --getsize64 /dev/vda 2>&1)
[ "$s" = "$IMG_SIZE" ] && ck PASS size-vda "$s" || ck FAIL size-vda "guest $s, host $IMG_SIZE"
s=$(blockdev --getsize64 /dev/vdb 2>&1)
[ "$s" = "$IMG2_SIZE" ] && ck PASS size-vdb "$s" || ck FAIL size-vdb "guest $s, host $IMG2_SIZE"
info "vda: queues=$(ls -d /sys/block/vda/mq/* 2>/dev/null | wc -l) cache_type='$(cat /sys/block/vda/cache_type 2>/dev/null)' discard_max_bytes=$(cat /sys/block/vda/queue/discard_max_bytes) write_zeroes_max_bytes=$(cat /sys/block/vda/queue/write_zeroes_max_bytes) lbs=$(cat /sys/block/vda/queue/logical_block_size)"

# -- preexisting data
h=$(dd if=/dev/vda bs=1M count=1 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$h" = "$HEAD_SHA" ] && ck PASS read-existing "first MiB matches host" || ck FAIL read-existing "first MiB differs"

# -- pattern at 1 MiB + 4 KiB
if dd if=pattern.bin of=/dev/vda bs=4096 seek=$PAT_SEEK count=$PAT_BLOCKS oflag=direct conv=notrunc 2>/tmp/dd.err; then
    echo 3 > /proc/sys/vm/drop_caches
    h=$(dd if=/dev/vda bs=4096 skip=$PAT_SEEK count=$PAT_BLOCKS iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
    [ "$h" = "$PAT_SHA" ] && ck PASS pattern-readback "$((PAT_SEEK * 4096))+64KiB" || ck FAIL pattern-readback "got $h"
else
    ck FAIL pattern-write "$(cat /tmp/dd.err)"
fi

# -- multiqueue: one hctx (= virtqueue) per CPU; I/O pinned to a CPU must complete on its own
#    virtqueue, seen as interrupts on that queue's MSI-X vector (virtioN-req.Q in /proc/interrupts).
nq=$(ls -d /sys/block/vda/mq/* 2>/dev/null | wc -l)
[ "$nq" = 2 ] && ck PASS mq-dirs "2 hw queues" || ck FAIL mq-dirs "$nq hw queues (want 2)"
VDEV=$(basename "$(readlink -f /sys/block/vda/device)")
irqs() { awk -v n="$VDEV-req.$1" '$NF == n { s = 0; for (i = 2; i < NF; i++) if ($i ~ /^[0-9]+$/) s += $i; print s }' /proc/interrupts; }
for cpu in 0 1; do
    hq=""
    for q in /sys/block/vda/mq/*; do
        for c in $(tr ',' ' ' < $q/cpu_list); do [ "$c" = "$cpu" ] && hq=${q##*/}; done
    done
    if [ -z "$hq" ] || [ -z "$(irqs $hq)" ]; then
        ck FAIL queue-cpu$cpu "cpu $cpu: hctx '${hq}', no $VDEV-req.$hq in /proc/interrupts"; continue
    fi
    b0=$(irqs 0) b1=$(irqs 1) b=$(irqs $hq)
    taskset -c $cpu dd if=/dev/vda of=/dev/null bs=4096 skip=4096 count=256 iflag=direct 2>/dev/null
    a=$(irqs $hq)
    d="req.$hq irqs +$((a - b)) (req.0 +$(( $(irqs 0) - b0 )), req.1 +$(( $(irqs 1) - b1 )))"
    [ $((a - b)) -ge 64 ] && ck PASS queue-cpu$cpu "256 reads pinned to cpu$cpu: $d" \
                          || ck FAIL queue-cpu$cpu "256 reads pinned to cpu$cpu: $d, want >= 64"
done

# -- fio verify, 2 jobs pinned one per CPU (each on its own hw queue)
fio --name=verify --filename=/dev/vda --direct=1 --ioengine=libaio --iodepth=8 --rw=randrw --bs=4k \
    --offset=$FIO_OFF --size=$FIO_SIZE --numjobs=2 --offset_increment=$FIO_SIZE \
    --cpus_allowed=0-1 --cpus_allowed_policy=split --verify=crc32c --verify_fatal=1 --do_verify=1 \
    --thread --group_reporting --output=/tmp/fio.out > /tmp/fio.err 2>&1
rc=$?
grep -E 'read:|write:|err=' /tmp/fio.out | sed 's/^/  fio: /'
if [ $rc = 0 ] && grep -q 'err= 0' /tmp/fio.out; then
    ck PASS fio-verify "randrw libaio 2x$((FIO_SIZE / 1048576))MiB"
else
    cat /tmp/fio.err /tmp/fio.out | tail -n 20 | sed 's/^/  fio: /'
    ck FAIL fio-verify "fio rc=$rc"
fi

# -- discard (host checks that the blocks were freed)
dmax=$(cat /sys/block/vda/queue/discard_max_bytes)
if [ "$dmax" -gt 0 ] 2>/dev/null; then
    d0=$(statf vda 12)
    if blkdiscard -o $DISC_OFF -l $DISC_LEN /dev/vda 2>/tmp/bd.err; then
        ck PASS discard "blkdiscard ok, discard ios +$(( $(statf vda 12) - d0 ))"
    else
        ck FAIL discard "blkdiscard: $(cat /tmp/bd.err)"
    fi
else
    ck FAIL discard "discard not advertised (discard_max_bytes=$dmax)"
fi

# -- read-only disk
[ "$(cat /sys/block/vdb/ro)" = 1 ] && ck PASS ro-flag "vdb ro=1" || ck FAIL ro-flag "vdb ro=$(cat /sys/block/vdb/ro)"
h=$(dd if=/dev/vdb bs=1M iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$h" = "$IMG2_SHA" ] && ck PASS ro-read "content matches host" || ck FAIL ro-read "content differs"
if dd if=/dev/zero of=/dev/vdb bs=4096 count=1 oflag=direct conv=notrunc 2>/tmp/dd.err; then
    ck FAIL ro-write-refused "dd to /dev/vdb succeeded"
else
    ck PASS ro-write-refused "$(grep -m1 dd: /tmp/dd.err)"
fi
# Try to push a write past the guest's own ro flag; whatever happens, the host checks its file.
blockdev --setrw /dev/vdb 2>/dev/null
if dd if=/dev/zero of=/dev/vdb bs=4096 count=1 oflag=direct conv=notrunc 2>/tmp/dd.err; then
    info "ro: after blockdev --setrw, a direct write to vdb was accepted by the guest kernel"
else
    info "ro: after blockdev --setrw, write still refused: $(grep -m1 dd: /tmp/dd.err)"
fi

# -- flush: switch to write back (a config write, needs VIRTIO_BLK_F_CONFIG_WCE), fsync the device,
#    stat field 16 (completed flushes) must move. In write through the block layer drops flushes.
ct0=$(cat /sys/block/vda/cache_type 2>/dev/null)
if [ "$ct0" = "write through" ]; then
    f0=$(statf vda 16); sync /dev/vda; f1=$(statf vda 16)
    info "flush: in write through, fsync of /dev/vda completed $((f1 - f0)) flushes"
fi
if echo "write back" > /sys/block/vda/cache_type 2>/tmp/ct.err && [ "$(cat /sys/block/vda/cache_type)" = "write back" ]; then
    ck PASS wce-config "cache_type '$ct0' -> 'write back'"
    switched=1
else
    switched=0
    if [ "$BACKEND" = qsd ]; then ck SKIP wce-config "cannot set write back (cache_type mode $(stat -c %a /sys/block/vda/cache_type), CONFIG_WCE not offered?) $(cat /tmp/ct.err); tolerated for qsd"
    else ck FAIL wce-config "cannot set write back from '$ct0' (cache_type mode $(stat -c %a /sys/block/vda/cache_type), CONFIG_WCE not offered?) $(cat /tmp/ct.err)"; fi
fi
if [ "$(cat /sys/block/vda/cache_type)" = "write back" ]; then
    f0=$(statf vda 16)
    dd if=pattern.bin of=/dev/vda bs=4096 seek=$FLUSH_OFF_BLOCKS count=1 conv=notrunc 2>/dev/null
    sync /dev/vda 2>/tmp/sync.err; src=$?
    f1=$(statf vda 16)
    if [ $src != 0 ]; then ck FAIL flush "fsync of /dev/vda failed: $(cat /tmp/sync.err)"
    elif [ $((f1 - f0)) -ge 1 ]; then ck PASS flush "flushes +$((f1 - f0)) after 'write back' + fsync"
    else ck FAIL flush "no flush completed (field16 $f0 -> $f1)"; fi
else
    ck SKIP flush "disk is '$(cat /sys/block/vda/cache_type)', no flush can reach the device"
fi
if [ $switched = 1 ] && [ "$ct0" != "write back" ]; then
    # Back to the initial mode (another config write the backend must take).
    echo "$ct0" > /sys/block/vda/cache_type 2>/dev/null
    [ "$(cat /sys/block/vda/cache_type)" = "$ct0" ] && ck PASS wce-restore "back to '$ct0'" \
        || ck FAIL wce-restore "cannot switch back to '$ct0' (now '$(cat /sys/block/vda/cache_type)')"
fi

info "vda stat: $(cat /sys/block/vda/stat)"
sync
if [ -z "$FAILS" ]; then echo "GUEST-RESULT: PASS"; else echo "GUEST-RESULT: FAIL$FAILS"; fi
GUEST

# --- run the guest -------------------------------------------------------------------------------
T1=$(date +%s)
rg_opts=(--log "$CLOG" --timeout "$GUEST_TIMEOUT")
[ "${VERBOSE:-0}" = 1 ] || rg_opts+=(--quiet)
"$REPO/scripts/run-guest.sh" "${rg_opts[@]}" "$WORK/guest.sh" -- \
    -chardev "socket,id=c0,path=$SOCK" -device vhost-user-blk-pci,chardev=c0,num-queues=2 \
    -chardev "socket,id=c1,path=$SOCK2" -device vhost-user-blk-pci,chardev=c1,num-queues=1
grc=$?
T2=$(date +%s)
case $grc in
    0) check PASS guest "all guest checks passed ($((T2 - T1))s)" ;;
    1) check FAIL guest "$(grep -a '^GUEST-RESULT' "$CLOG" | tail -n1)" ;;
    124) check FAIL guest "timeout after ${GUEST_TIMEOUT}s" ;;
    *) check FAIL guest "no result (exit $grc), see $CLOG" ;;
esac
while read -r _ st name detail; do
    CHECKS+=("$(printf '%-4s %-26s %s' "$st" "g:$name" "$detail")")
done < <(grep -a '^CHECK ' "$CLOG")
while read -r _ line; do CHECKS+=("INFO $line"); done < <(grep -a '^INFO ' "$CLOG")

# --- host side -----------------------------------------------------------------------------------
if kill -0 "$BPID" 2>/dev/null; then check PASS backend-alive "$BACKEND still running"; else
    wait "$BPID"; check FAIL backend-alive "$BACKEND exited (status $?)"; fi


# Stop the backend so everything it wrote is in the files.
kill "$BPID" 2>/dev/null
for _ in $(seq 50); do kill -0 "$BPID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$BPID" 2>/dev/null; then check FAIL h:backend-stop "did not exit on SIGTERM within 5s"; kill -9 "$BPID"; fi
wait "$BPID" 2>/dev/null; BRC=$?; BPID=

# vdevd logs per-queue totals when it stops: both queues of disk0 must have carried I/O, the guest's
# flush and discard must have reached it, and SIGTERM must be a clean exit that removes the sockets.
check_vdevd_after_stop() {
    [ "$BRC" = 0 ] && check PASS h:vdevd-exit "status 0 on SIGTERM" || check FAIL h:vdevd-exit "status $BRC on SIGTERM"
    [ ! -e "$SOCK" ] && [ ! -e "$SOCK2" ] && check PASS h:sockets-removed "" || check FAIL h:sockets-removed "socket left behind"
    local q0 q1 fl di
    q0=$(grep "export=disk0" "$BLOG" | grep -o "queue 0 totals: .*" | grep -o "requests=[0-9]*" | cut -d= -f2)
    q1=$(grep "export=disk0" "$BLOG" | grep -o "queue 1 totals: .*" | grep -o "requests=[0-9]*" | cut -d= -f2)
    fl=$(grep "export=disk0" "$BLOG" | grep -o "totals: .*" | grep -o "flushes=[0-9]*" | cut -d= -f2 | awk '{s+=$1} END {print s+0}')
    di=$(grep "export=disk0" "$BLOG" | grep -o "totals: .*" | grep -o "discards=[0-9]*" | cut -d= -f2 | awk '{s+=$1} END {print s+0}')
    if [ "${q0:-0}" -gt 0 ] && [ "${q1:-0}" -gt 0 ]; then
        check PASS h:vdevd-queue-counters "disk0 requests: queue0=$q0 queue1=$q1"
    else
        check FAIL h:vdevd-queue-counters "disk0 requests: queue0=${q0:-none} queue1=${q1:-none}"
    fi
    [ "${fl:-0}" -gt 0 ] && check PASS h:vdevd-flushes "flushes=$fl" || check FAIL h:vdevd-flushes "no flush reached vdevd"
    [ "${di:-0}" -gt 0 ] && check PASS h:vdevd-discards "discards=$di" || check FAIL h:vdevd-discards "no discard reached vdevd"
}
[ "$BACKEND" = vdevd ] && check_vdevd_after_stop
sync "$IMG" "$IMG2"

s=$(stat -c %s "$IMG")
[ "$s" = "$IMG_SIZE" ] && check PASS h:img-size "$s" || check FAIL h:img-size "$s != $IMG_SIZE"
h=$(dd if="$IMG" bs=4096 skip=$PAT_SEEK count=$PAT_BLOCKS status=none | sha256sum | cut -d' ' -f1)
[ "$h" = "$PAT_SHA" ] && check PASS h:pattern-in-file "at offset $((PAT_SEEK * 4096))" || check FAIL h:pattern-in-file "sha $h"
DU_AFTER=$(du -k "$IMG" | cut -f1)
freed=$((DU_BEFORE - DU_AFTER))
want=$((DISC_LEN / 1024 * 9 / 10))
[ $freed -ge $want ] && check PASS h:discard-freed "du -k $DU_BEFORE -> $DU_AFTER (freed $freed KiB, discarded $((DISC_LEN / 1024)))" \
                     || check FAIL h:discard-freed "du -k $DU_BEFORE -> $DU_AFTER (freed $freed KiB, want >= $want)"
if cmp -s -n "$DISC_LEN" <(dd if="$IMG" bs=1M skip=$((DISC_OFF / MiB)) count=$((DISC_LEN / MiB)) status=none) /dev/zero; then
    CHECKS+=("INFO host: discarded range reads back as zeros")
else
    CHECKS+=("INFO host: discarded range does NOT read back as zeros (allowed by virtio)")
fi
h=$(sha256sum < "$IMG2" | cut -d' ' -f1)
[ "$h" = "$IMG2_SHA" ] && check PASS h:ro-unchanged "ro0.img checksum unchanged" || check FAIL h:ro-unchanged "ro0.img CHANGED"

# --- summary -------------------------------------------------------------------------------------
T3=$(date +%s)
echo
echo "==== blk-e2e summary (BACKEND=$BACKEND, guest $((T2 - T1))s, total $((T3 - T0))s) ===="
printf '%s\n' "${CHECKS[@]}"
if [ $FAILED = 0 ]; then
    echo "==== RESULT: PASS ===="
    exit 0
fi
echo "==== RESULT: FAIL (console: $CLOG, backend log: $BLOG) ===="
exit 1
