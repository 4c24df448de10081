#!/bin/bash
# vduse-blk end-to-end test: vdevd runs inside a guest whose kernel has VDUSE (Debian's 6.12, under QEMU TCG),
# exports a file as /dev/vduse/NAME, `vdpa dev add` binds it to virtio_vdpa, and the guest's own block layer and
# tools check it. This host's kernel has no VDUSE; the guest reaches vdevd, fio and vdpa over 9p (host root).
#
#   Tests/E2E/vduse-e2e.sh        VDEVD=.build/debug/vdevd, VDEVCTL=.build/debug/vdevctl
#
# Environment: GUEST_TIMEOUT=seconds (default 240), KEEP_WORK=1, VERBOSE=1 (echo the guest console live),
#              VDUSE_KERNEL_PKG=linux-image-6.12...-unsigned (default: the newest 6.12 amd64 image apt knows).
# Exit status: 0 all checks passed, 1 a check failed, 2 setup error.
#
# Checks, all in the guest (backing files live in the guest's /tmp: the host root is shared read-only):
#   vdevd creates /dev/vduse/vd0 (writable, 64 MiB) and /dev/vduse/vr0 (read-only, 16 MiB)
#   vdpa dev add brings up a block device for each; its size is the file's
#   a 64 KiB pattern written with O_DIRECT at 1 MiB + 4 KiB reads back, and is in the backing file
#   fio --verify (libaio, direct) passes, on 2 queues (both carry requests); an fsync of the device is a flush
#   (write back without CONFIG_WCE)
#   the read-only device is read-only, refuses a write, and its file is unchanged
#   restart: vdevd killed (SIGKILL) under fio --verify and started again takes the attached devices over; fio
#   completes with verification passing
#   vdpa dev del removes the block device; `vdevctl remove` then removes /dev/vduse/vd0 (VDUSE_DESTROY_DEV)
#   vdevd exits 0 on SIGTERM and leaves no /dev/vduse device behind
#   vduse-net: two ports of one switch become interfaces with the exports' MACs; one in a network namespace
#   pings the other through the switch; vdpa dev del removes them; the switch port counted the frames
set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VDEVD=${VDEVD:-.build/debug/vdevd}
VDEVCTL=${VDEVCTL:-.build/debug/vdevctl}
GUEST_TIMEOUT=${GUEST_TIMEOUT:-240}
cd "$REPO"

T0=$(date +%s)
CHECKS=()
FAILED=0
check() {
    local st=$1 name=$2; shift 2
    CHECKS+=("$(printf '%-4s %-26s %s' "$st" "$name" "$*")")
    if [ "$st" = FAIL ]; then FAILED=1; fi
    echo "vduse-e2e: $st $name $*"
    return 0
}
die() { echo "vduse-e2e: SETUP ERROR: $*" >&2; exit 2; }

[ -x "$VDEVD" ] || die "VDEVD=$VDEVD not executable (swift build)"
[ -x "$VDEVCTL" ] || die "VDEVCTL=$VDEVCTL not executable (swift build)"
VDEVD=$(realpath "$VDEVD") VDEVCTL=$(realpath "$VDEVCTL")
for t in qemu-system-x86_64 fio sha256sum; do command -v $t >/dev/null || die "$t missing (scripts/guest-image.sh --install-deps)"; done
VDPA=$(command -v vdpa || echo /usr/sbin/vdpa)
[ -x "$VDPA" ] || die "vdpa missing (apt-get install iproute2)"
IP=$(realpath "$(command -v ip || echo /usr/sbin/ip)")
[ -x "$IP" ] || die "ip missing (apt-get install iproute2)"
case "$VDEVD" in /tmp/*) die "$VDEVD is under /tmp, which the guest cannot see over 9p" ;; esac

# The guest kernel: Debian's 6.12 (VDUSE as modules; 6.1 has no vDPA). virtio_vdpa, not vhost_vdpa, must take
# the device, so vhost_vdpa is not loaded.
if [ -z "${VDUSE_KERNEL_PKG:-}" ]; then
    VDUSE_KERNEL_PKG=$(apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$' 2>/dev/null |
                       awk '{print $1}' | sort -V | tail -n1)
fi
[ -n "$VDUSE_KERNEL_PKG" ] || die "no Debian 6.12 kernel package found (apt-get update?)"
export GUEST_KERNEL_PKG=$VDUSE_KERNEL_PKG
export GUEST_EXTRA_MODULES="vhost_iotlb vdpa vduse virtio_vdpa"
# shellcheck source=../../scripts/guest-image.sh
source "$REPO/scripts/guest-image.sh" || die "guest image build failed ($VDUSE_KERNEL_PKG)"

mkdir -p "$REPO/.cache"
# shellcheck source=../../scripts/e2e-workdir.sh
source "$REPO/scripts/e2e-workdir.sh"
WORK=$(e2e_workdir vduse)
cleanup() {
    if [ "$FAILED" = 0 ] && [ "${KEEP_WORK:-0}" != 1 ]; then rm -rf "$WORK"; else echo "vduse-e2e: work dir kept: $WORK"; fi
}
trap cleanup EXIT
trap 'exit 2' INT TERM
CLOG=$WORK/console.log

LDSO=$(realpath /lib64/ld-linux-x86-64.so.2)
LIBPATH=""
for d in /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu/ceph; do
    [ -d "$d" ] && LIBPATH="$LIBPATH${LIBPATH:+:}/host$(realpath "$d")"
done
# The Swift runtime vdevd was linked against.
SWIFTLIB=$(ldd "$VDEVD" | awk '/libswiftCore.so/ {print $3}' | xargs -r dirname)
[ -n "$SWIFTLIB" ] && LIBPATH="/host$SWIFTLIB:$LIBPATH"
cat > "$WORK/guest-env.sh" <<ENV
HOSTRUN='/host$LDSO --library-path $LIBPATH'
VDEVD='/host$VDEVD'
VDEVCTL='/host$VDEVCTL'
VDPA='/host$VDPA'
IP='/host$IP'
ENV

cat > "$WORK/guest.sh" <<'GUEST'
# Runs inside the guest (busybox sh), cwd = the work dir seen over 9p.
. ./guest-env.sh
FAILS=""
ck() {
    echo "CHECK $1 $2 ${3:-}"
    if [ "$1" = FAIL ]; then FAILS="$FAILS $2"; fi
    return 0
}
info() { echo "INFO $*"; }
fio() { $HOSTRUN /host/usr/bin/fio "$@"; }
vdpa() { $HOSTRUN $VDPA "$@"; }
MGMT=/tmp/mgmt.sock
vdevctl() { $HOSTRUN $VDEVCTL --socket $MGMT "$@"; }
# The block device virtio_vdpa made for VDUSE device $1 (vdX), or nothing.
blkdev() { ls /sys/bus/vdpa/devices/$1/virtio*/block 2>/dev/null | head -n1; }
wait_for() {  # wait_for TENTHS COMMAND...: until COMMAND succeeds
    n=$1; shift
    while [ "$n" -gt 0 ]; do "$@" && return 0; sleep 0.1; n=$((n - 1)); done
    return 1
}
finish() {
    [ -n "${VPID:-}" ] && kill -0 $VPID 2>/dev/null && { kill $VPID; sleep 1; }
    echo "---- vdevd log (first process) ----"; cat /tmp/vdevd-first.log 2>/dev/null | tail -n 30
    echo "---- vdevd log ----"; cat /tmp/vdevd.log 2>/dev/null | tail -n 60
    if [ -z "$FAILS" ]; then echo "GUEST-RESULT: PASS"; else echo "GUEST-RESULT: FAIL$FAILS"; fi
    exit 0
}

[ -c /dev/vduse/control ] && ck PASS vduse-control "$(uname -r)" || { ck FAIL vduse-control "no /dev/vduse/control (modules: $(lsmod | awk '{print $1}' | tr '\n' ' '))"; finish; }

MiB=1048576
dd if=/dev/urandom of=/tmp/disk.img bs=1M count=64 2>/dev/null
dd if=/dev/urandom of=/tmp/ro.img bs=1M count=16 2>/dev/null
dd if=/dev/urandom of=/tmp/pattern.bin bs=4096 count=16 2>/dev/null
PAT_SHA=$(sha256sum < /tmp/pattern.bin | cut -d' ' -f1)
RO_SHA=$(sha256sum < /tmp/ro.img | cut -d' ' -f1)

$HOSTRUN $VDEVD --management-socket /tmp/mgmt.sock --poll-us 0 \
    --export "vduse-blk,id=disk0,name=vd0,path=/tmp/disk.img,num-queues=2" \
    --export "vduse-blk,id=ro0,name=vr0,path=/tmp/ro.img,readonly=on" > /tmp/vdevd.log 2>&1 &
VPID=$!
if wait_for 100 test -c /dev/vduse/vd0 -a -c /dev/vduse/vr0; then
    ck PASS vduse-devices "/dev/vduse/vd0 /dev/vduse/vr0"
else
    ck FAIL vduse-devices "vdevd made no /dev/vduse devices"; finish
fi

vdpa dev add name vd0 mgmtdev vduse 2>/tmp/vdpa.err || ck FAIL vdpa-add "vd0: $(cat /tmp/vdpa.err)"
vdpa dev add name vr0 mgmtdev vduse 2>/tmp/vdpa.err || ck FAIL vdpa-add "vr0: $(cat /tmp/vdpa.err)"
if wait_for 300 test -n "$(blkdev vd0)" && wait_for 100 test -n "$(blkdev vr0)"; then
    D=$(blkdev vd0) R=$(blkdev vr0)
    wait_for 100 test -b /dev/$D -a -b /dev/$R
    ck PASS vdpa-add "vd0 -> /dev/$D, vr0 -> /dev/$R"
else
    ck FAIL vdpa-add "no block device (vdpa: $(vdpa dev show 2>&1 | tr '\n' ' '))"; finish
fi
info "$D: features $(cat /sys/bus/vdpa/devices/vd0/virtio*/features 2>/dev/null) cache_type='$(cat /sys/block/$D/cache_type 2>/dev/null)' queues=$(ls -d /sys/block/$D/mq/* | wc -l)"

nq=$(ls -d /sys/block/$D/mq/* | wc -l)
[ "$nq" = 2 ] && ck PASS mq-dirs "2 hw queues (num-queues=2)" || ck FAIL mq-dirs "$nq hw queues, want 2"
s=$(blockdev --getsize64 /dev/$D)
[ "$s" = $((64 * MiB)) ] && ck PASS size-rw "$s" || ck FAIL size-rw "$s, file is $((64 * MiB))"
s=$(blockdev --getsize64 /dev/$R)
[ "$s" = $((16 * MiB)) ] && ck PASS size-ro "$s" || ck FAIL size-ro "$s, file is $((16 * MiB))"

h=$(dd if=/dev/$D bs=1M count=1 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$h" = "$(dd if=/tmp/disk.img bs=1M count=1 2>/dev/null | sha256sum | cut -d' ' -f1)" ] \
    && ck PASS read-existing "first MiB matches the file" || ck FAIL read-existing "first MiB differs"

if dd if=/tmp/pattern.bin of=/dev/$D bs=4096 seek=257 count=16 oflag=direct conv=notrunc 2>/tmp/dd.err; then
    echo 3 > /proc/sys/vm/drop_caches
    h=$(dd if=/dev/$D bs=4096 skip=257 count=16 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
    [ "$h" = "$PAT_SHA" ] && ck PASS pattern-readback "1 MiB+4 KiB, 64 KiB" || ck FAIL pattern-readback "got $h"
    h=$(dd if=/tmp/disk.img bs=4096 skip=257 count=16 2>/dev/null | sha256sum | cut -d' ' -f1)
    [ "$h" = "$PAT_SHA" ] && ck PASS pattern-in-file "/tmp/disk.img at 1 MiB+4 KiB" || ck FAIL pattern-in-file "got $h"
else
    ck FAIL pattern-write "$(cat /tmp/dd.err)"
fi

# Two jobs pinned one per CPU, so each hw queue (virtqueue) carries I/O.
fio --name=verify --filename=/dev/$D --direct=1 --ioengine=libaio --iodepth=8 --rw=randrw --bs=4k \
    --offset=$((8 * MiB)) --size=$((4 * MiB)) --numjobs=2 --offset_increment=$((4 * MiB)) \
    --cpus_allowed=0-1 --cpus_allowed_policy=split --verify=crc32c --verify_fatal=1 --do_verify=1 \
    --thread --group_reporting --output=/tmp/fio.out > /tmp/fio.err 2>&1
rc=$?
grep -E 'read:|write:|err=' /tmp/fio.out | sed 's/^/  fio: /'
if [ $rc = 0 ] && grep -q 'err= 0' /tmp/fio.out; then ck PASS fio-verify "randrw libaio 2x4 MiB"; else
    cat /tmp/fio.err /tmp/fio.out | tail -n 20 | sed 's/^/  fio: /'; ck FAIL fio-verify "fio rc=$rc"; fi

# Restart: vdevd is killed (SIGKILL) under fio --verify and started again with the same exports. The devices stay
# attached; the new vdevd takes them over, resubmits what the old one had in flight, and fio sees a pause.
start_vdevd() {  # start_vdevd MGMT_SOCKET LOG
    $HOSTRUN $VDEVD --management-socket $1 --poll-us 0 \
        --export "vduse-blk,id=disk0,name=vd0,path=/tmp/disk.img,num-queues=2" \
        --export "vduse-blk,id=ro0,name=vr0,path=/tmp/ro.img,readonly=on" > $2 2>&1 &
    VPID=$!
}
fio --name=restart --filename=/dev/$D --direct=1 --ioengine=libaio --iodepth=16 --rw=randwrite --bs=4k \
    --offset=$((24 * MiB)) --size=$((16 * MiB)) --numjobs=2 --offset_increment=$((16 * MiB)) \
    --cpus_allowed=0-1 --cpus_allowed_policy=split --verify=crc32c --verify_fatal=1 --do_verify=1 \
    --thread --group_reporting --output=/tmp/fio2.out > /tmp/fio2.err 2>&1 &
FPID=$!
# Kill once fio's writes are flowing (fio itself takes a while to load over 9p): 1000 more completed writes.
w0=$(awk '{print $5}' /sys/block/$D/stat)
writes_flowing() { [ $(($(awk '{print $5}' /sys/block/$D/stat) - w0)) -ge 1000 ]; }
wait_for 600 writes_flowing || info "fio's writes did not reach 1000 within 60 s"
info "killing vdevd after $(($(awk '{print $5}' /sys/block/$D/stat) - w0)) writes of the restart fio, $(awk '{print $9}' /sys/block/$D/stat) requests in flight"
kill -9 $VPID
wait $VPID 2>/dev/null
cat /tmp/vdevd.log >> /tmp/vdevd-first.log
sleep 1
if kill -0 $FPID 2>/dev/null; then info "fio still running with vdevd dead (its I/O waits)"; else info "fio had finished before the kill"; fi
start_vdevd /tmp/mgmt2.sock /tmp/vdevd.log
wait $FPID
rc=$?
grep -E 'write:|read:|err=' /tmp/fio2.out | sed 's/^/  fio: /'
if [ $rc = 0 ] && grep -q 'err= 0' /tmp/fio2.out; then ck PASS restart-fio-verify "vdevd killed under fio randwrite+verify and restarted"; else
    cat /tmp/fio2.err /tmp/fio2.out | tail -n 20 | sed 's/^/  fio: /'; ck FAIL restart-fio-verify "fio rc=$rc"; fi
grep -q "taking it over" /tmp/vdevd.log && ck PASS restart-takeover "$(grep -o 'taking over a running device.*' /tmp/vdevd.log | head -n1)" \
    || ck FAIL restart-takeover "the new vdevd did not take the device over"
info "restart: $(grep -o 'resubmitting [0-9]* request(s)' /tmp/vdevd.log | tr '\n' ' ')"
MGMT=/tmp/mgmt2.sock

# No CONFIG_WCE through VDUSE: the driver sees FLUSH, so the disk is write back, and an fsync of the device
# sends a flush (the 16th field of stat counts them).
f0=$(awk '{print $16}' /sys/block/$D/stat)
$HOSTRUN /host/usr/bin/sync /dev/$D
f1=$(awk '{print $16}' /sys/block/$D/stat)
[ "$(cat /sys/block/$D/cache_type)" = "write back" ] && [ "$f1" -gt "$f0" ] \
    && ck PASS flush "cache_type 'write back', flushes $f0 -> $f1" \
    || ck FAIL flush "cache_type '$(cat /sys/block/$D/cache_type)', flushes $f0 -> $f1"

[ "$(cat /sys/block/$R/ro)" = 1 ] && ck PASS ro-flag "/sys/block/$R/ro = 1" || ck FAIL ro-flag "ro=$(cat /sys/block/$R/ro)"
if dd if=/tmp/pattern.bin of=/dev/$R bs=4096 count=1 oflag=direct conv=notrunc 2>/dev/null; then
    ck FAIL ro-refuses-write "a write to /dev/$R succeeded"
else
    ck PASS ro-refuses-write "write to /dev/$R failed"
fi
[ "$(sha256sum < /tmp/ro.img | cut -d' ' -f1)" = "$RO_SHA" ] && ck PASS ro-unchanged "ro.img unchanged" || ck FAIL ro-unchanged "ro.img CHANGED"

# Teardown in the order the kernel needs: detach (vdpa dev del), then the export goes (VDUSE_DESTROY_DEV).
vdpa dev del vd0 2>/tmp/vdpa.err || ck FAIL vdpa-del "$(cat /tmp/vdpa.err)"
wait_for 100 test ! -b /dev/$D && ck PASS vdpa-del "/dev/$D gone" || ck FAIL vdpa-del "/dev/$D still there"
vdevctl remove disk0 > /tmp/ctl.out 2>&1 || ck FAIL export-remove "vdevctl: $(cat /tmp/ctl.out)"
wait_for 100 test ! -e /dev/vduse/vd0 && ck PASS export-remove "/dev/vduse/vd0 destroyed" || ck FAIL export-remove "/dev/vduse/vd0 still there"
# The other export still serves.
h=$(dd if=/dev/$R bs=1M count=1 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$h" = "$(dd if=/tmp/ro.img bs=1M count=1 2>/dev/null | sha256sum | cut -d' ' -f1)" ] \
    && ck PASS other-export-serves "/dev/$R reads after disk0 went" || ck FAIL other-export-serves "/dev/$R read differs"

vdpa dev del vr0 2>/tmp/vdpa.err || ck FAIL vdpa-del-ro "$(cat /tmp/vdpa.err)"
kill -TERM $VPID
n=100; while [ $n -gt 0 ] && kill -0 $VPID 2>/dev/null; do sleep 0.1; n=$((n - 1)); done
if kill -0 $VPID 2>/dev/null; then ck FAIL vdevd-exit "still running 10 s after SIGTERM"; else
    wait $VPID; rc=$?; [ $rc = 0 ] && ck PASS vdevd-exit "status 0 on SIGTERM" || ck FAIL vdevd-exit "status $rc"; fi
VPID=
left=$(ls /dev/vduse | grep -v '^control$' | tr '\n' ' ')
[ -z "$left" ] && ck PASS nothing-left "only /dev/vduse/control" || ck FAIL nothing-left "left: $left"
q0=$(grep "export=disk0" /tmp/vdevd.log | grep -o "queue 0 totals: .*" | grep -o "requests=[0-9]*" | cut -d= -f2)
q1=$(grep "export=disk0" /tmp/vdevd.log | grep -o "queue 1 totals: .*" | grep -o "requests=[0-9]*" | cut -d= -f2)
fl=$(grep "export=disk0" /tmp/vdevd.log | grep -o "totals: .*" | grep -o "flushes=[0-9]*" | cut -d= -f2 | awk '{s+=$1} END {print s+0}')
[ "${q0:-0}" -gt 0 ] && [ "${q1:-0}" -gt 0 ] && ck PASS vdevd-counters "disk0 requests: queue0=$q0 queue1=$q1" \
    || ck FAIL vdevd-counters "disk0 requests: queue0=${q0:-none} queue1=${q1:-none}"
[ "$fl" -gt 0 ] && ck PASS vdevd-flushes "flushes=$fl" || ck FAIL vdevd-flushes "no flush reached vdevd"

# -- vduse-net: two ports of one in-daemon switch become two interfaces; one goes into a network namespace,
#    and they ping each other through the switch (link-local addresses, nothing leaves the guest).
ip() { $HOSTRUN $IP "$@"; }
netdev() { ls /sys/bus/vdpa/devices/$1/virtio*/net 2>/dev/null | head -n1; }
$HOSTRUN $VDEVD --management-socket none --poll-us 0 --switch id=sw0 \
    --export "vduse-net,id=h0,name=vn0,switch=sw0,mac=52:54:00:00:00:01" \
    --export "vduse-net,id=h1,name=vn1,switch=sw0,mac=52:54:00:00:00:02" > /tmp/vdevd-net.log 2>&1 &
VPID=$!
cp /tmp/vdevd-net.log /tmp/vdevd.log 2>/dev/null
if wait_for 100 test -c /dev/vduse/vn0 -a -c /dev/vduse/vn1; then
    vdpa dev add name vn0 mgmtdev vduse 2>/tmp/vdpa.err || ck FAIL net-vdpa-add "vn0: $(cat /tmp/vdpa.err)"
    vdpa dev add name vn1 mgmtdev vduse 2>/tmp/vdpa.err || ck FAIL net-vdpa-add "vn1: $(cat /tmp/vdpa.err)"
fi
if wait_for 300 test -n "$(netdev vn0)" && wait_for 100 test -n "$(netdev vn1)"; then
    N0=$(netdev vn0) N1=$(netdev vn1)
    ck PASS net-vdpa-add "vn0 -> $N0, vn1 -> $N1"
    a0=$(cat /sys/class/net/$N0/address) a1=$(cat /sys/class/net/$N1/address)
    [ "$a0" = 52:54:00:00:00:01 ] && [ "$a1" = 52:54:00:00:00:02 ] && ck PASS net-mac "$N0 $a0, $N1 $a1" \
        || ck FAIL net-mac "$N0 $a0, $N1 $a1 (want the export's mac=)"
    mkdir -p /var/run/netns
    ip netns add peer && ip link set $N1 netns peer || ck FAIL net-netns "cannot move $N1 into a namespace"
    ip addr add 169.254.10.1/16 dev $N0 && ip link set $N0 up
    ip netns exec peer $HOSTRUN $IP addr add 169.254.10.2/16 dev $N1
    ip netns exec peer $HOSTRUN $IP link set $N1 up
    if ping -c 5 -W 5 169.254.10.2 > /tmp/ping.out 2>&1; then
        ck PASS net-ping "$(grep -o '[0-9]* packets received' /tmp/ping.out) through the switch"
    else
        ck FAIL net-ping "$(tail -n 2 /tmp/ping.out | tr '\n' ' ')"
    fi
    info "net: $(ip -s link show $N0 | tr -s ' ' | tr '\n' ' ')"
    vdpa dev del vn0; vdpa dev del vn1
    wait_for 100 test ! -e /sys/class/net/$N0 && ck PASS net-vdpa-del "$N0 gone" || ck FAIL net-vdpa-del "$N0 still there"
else
    ck FAIL net-vdpa-add "no network interface (vdevd: $(tail -n 3 /tmp/vdevd-net.log | tr '\n' ' '))"
    vdpa dev del vn0 2>/dev/null; vdpa dev del vn1 2>/dev/null
fi
kill -TERM $VPID
n=100; while [ $n -gt 0 ] && kill -0 $VPID 2>/dev/null; do sleep 0.1; n=$((n - 1)); done
kill -0 $VPID 2>/dev/null && ck FAIL net-vdevd-exit "still running 10 s after SIGTERM" || { wait $VPID; ck PASS net-vdevd-exit "status $?"; }
VPID=
cp /tmp/vdevd-net.log /tmp/vdevd.log
tx=$(grep "export=h0" /tmp/vdevd-net.log | grep -o "switch port totals: .*" | grep -o "txFrames=[0-9]*" | cut -d= -f2)
[ "${tx:-0}" -gt 0 ] && ck PASS net-switch-counters "h0 port: txFrames=$tx" || ck FAIL net-switch-counters "h0 port sent nothing"
left=$(ls /dev/vduse | grep -v '^control$' | tr '\n' ' ')
[ -z "$left" ] && ck PASS net-nothing-left "only /dev/vduse/control" || ck FAIL net-nothing-left "left: $left"
finish
GUEST

T1=$(date +%s)
rg_opts=(--log "$CLOG" --timeout "$GUEST_TIMEOUT" --mem 1G)
[ "${VERBOSE:-0}" = 1 ] || rg_opts+=(--quiet)
"$REPO/scripts/run-guest.sh" "${rg_opts[@]}" "$WORK/guest.sh"
grc=$?
T2=$(date +%s)
case $grc in
    0) check PASS guest "all guest checks passed ($((T2 - T1))s, kernel $GUEST_KVER)" ;;
    1) check FAIL guest "$(grep -a '^GUEST-RESULT' "$CLOG" | tail -n1)" ;;
    124) check FAIL guest "timeout after ${GUEST_TIMEOUT}s" ;;
    *) check FAIL guest "no result (exit $grc), see $CLOG" ;;
esac
while read -r _ st name detail; do
    CHECKS+=("$(printf '%-4s %-26s %s' "$st" "g:$name" "$detail")")
done < <(grep -a '^CHECK ' "$CLOG")
while read -r _ line; do CHECKS+=("INFO $line"); done < <(grep -a '^INFO ' "$CLOG")
grep -aq '^CHECK FAIL' "$CLOG" && FAILED=1

T3=$(date +%s)
echo
echo "==== vduse-e2e summary (guest $((T2 - T1))s, total $((T3 - T0))s) ===="
printf '%s\n' "${CHECKS[@]}"
if [ $FAILED = 0 ]; then echo "==== RESULT: PASS ===="; exit 0; fi
echo "==== RESULT: FAIL (console: $CLOG) ===="
exit 1
