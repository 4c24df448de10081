#!/bin/bash
# vhost-user-blk restart end-to-end test: vdevd is SIGKILLed again and again under a real guest's verified
# writes and restarted at once; QEMU reconnects (reconnect=1) and hands back the in-flight region, and the
# restarted vdevd resubmits what was in flight.
#
#   Tests/E2E/blk-restart-e2e.sh      VDEVD=.build/debug/vdevd, KILLS=5, VDEVD_ARGS, DISK_KEYS, KEEP_WORK=1, VERBOSE=1
#
# Checks: every fio round in the guest (randwrite at depth 32, 2 jobs one per queue, crc32c verify of every
# block written) passes while the kills happen; at least KILLS kills landed while fio was running; the guest's
# kernel logged no I/O error and no hung task; each restarted vdevd accepted the in-flight region (its log
# says how many requests it resubmitted).
# Exit status: 0 all passed, 1 a check failed, 2 setup error.
set -u -o pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VDEVD=${VDEVD:-.build/debug/vdevd}
KILLS=${KILLS:-5}
GUEST_TIMEOUT=${GUEST_TIMEOUT:-240}
cd "$REPO"
CHECKS=() FAILED=0
check() { local st=$1 name=$2; shift 2; CHECKS+=("$(printf '%-4s %-22s %s' "$st" "$name" "$*")"); [ "$st" = FAIL ] && FAILED=1; echo "restart-e2e: $st $name $*"; return 0; }
die() { echo "restart-e2e: SETUP ERROR: $*" >&2; exit 2; }
[ -x "$VDEVD" ] || die "VDEVD=$VDEVD not executable"
# shellcheck source=../../scripts/guest-image.sh
source "$REPO/scripts/guest-image.sh" || die "guest image build failed"
mkdir -p "$REPO/.cache"
# shellcheck source=../../scripts/e2e-workdir.sh
source "$REPO/scripts/e2e-workdir.sh"
WORK=$(e2e_workdir restart)
IMG=$WORK/disk.img SOCK=$WORK/disk.sock CLOG=$WORK/console.log
BPID= QPID=
cleanup() {
    [ -n "$QPID" ] && kill "$QPID" 2>/dev/null
    [ -n "$BPID" ] && kill -9 "$BPID" 2>/dev/null
    if [ "$FAILED" = 0 ] && [ "${KEEP_WORK:-0}" != 1 ]; then rm -rf "$WORK"; else echo "restart-e2e: work dir kept: $WORK"; fi
}
trap cleanup EXIT
trap 'exit 2' INT TERM

dd if=/dev/urandom of="$IMG" bs=1M count=64 status=none || die "dd"
RUN=0
start_vdevd() {
    RUN=$((RUN + 1))
    # shellcheck disable=SC2086
    "$VDEVD" ${VDEVD_ARGS:-} --export "vhost-user-blk,id=disk0,path=$IMG,socket=$SOCK,num-queues=2${DISK_KEYS:-}" \
        > "$WORK/vdevd.$RUN.log" 2>&1 &
    BPID=$!
    for _ in $(seq 100); do grep -q "vdevd ready" "$WORK/vdevd.$RUN.log" 2>/dev/null && return 0; sleep 0.05; done
    die "vdevd run $RUN did not start: $(cat "$WORK/vdevd.$RUN.log")"
}
start_vdevd

LDSO=$(realpath /lib64/ld-linux-x86-64.so.2)
LIBPATH=""
for d in /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu/ceph; do
    [ -d "$d" ] && LIBPATH="$LIBPATH${LIBPATH:+:}/host$(realpath "$d")"
done
echo "HOSTRUN='/host$LDSO --library-path $LIBPATH'" > "$WORK/guest-env.sh"
cat > "$WORK/guest.sh" <<'GUEST'
. ./guest-env.sh
fio() { $HOSTRUN /host/usr/bin/fio "$@"; }
echo 10 > /proc/sys/kernel/hung_task_timeout_secs 2>/dev/null
round=0 fails=0
# Rounds until the host says it is done killing (it creates `stop` in this folder, seen over 9p).
while [ ! -e stop ] && [ $round -lt 200 ]; do
    round=$((round + 1))
    echo "FIO-ROUND $round"
    fio --name=v --filename=/dev/vda --direct=1 --ioengine=libaio --iodepth=32 --rw=randwrite --bs=4k \
        --size=4M --numjobs=2 --offset_increment=8M --cpus_allowed=0-1 --cpus_allowed_policy=split \
        --verify=crc32c --verify_fatal=1 --do_verify=1 --randseed=$round --thread --group_reporting \
        --output=/tmp/fio.out > /tmp/fio.err 2>&1
    rc=$?
    if [ $rc != 0 ] || ! grep -q 'err= 0' /tmp/fio.out; then
        fails=$((fails + 1)); echo "FIO-FAIL round $round rc=$rc"; tail -n 15 /tmp/fio.out /tmp/fio.err
    fi
done
echo "FIO-ROUNDS $round failed $fails"
errs=$(dmesg | grep -ciE 'I/O error|blocked for more than|hung_task')
echo "KERNEL-ERRORS $errs"
dmesg | grep -iE 'I/O error|blocked for more than' | head -n 5
[ $fails = 0 ] && [ $errs = 0 ] && echo "GUEST-RESULT: PASS" || echo "GUEST-RESULT: FAIL fio=$fails kernel=$errs"
GUEST

rg_opts=(--log "$CLOG" --timeout "$GUEST_TIMEOUT")
[ "${VERBOSE:-0}" = 1 ] || rg_opts+=(--quiet)
"$REPO/scripts/run-guest.sh" "${rg_opts[@]}" "$WORK/guest.sh" -- \
    -chardev "socket,id=c0,path=$SOCK,reconnect=1" -device vhost-user-blk-pci,chardev=c0,num-queues=2 &
QPID=$!
for _ in $(seq 1200); do grep -qa "FIO-ROUND 1" "$CLOG" 2>/dev/null && break; kill -0 $QPID 2>/dev/null || break; sleep 0.1; done
grep -qa "FIO-ROUND 1" "$CLOG" || die "the guest never started fio: $(tail -n 20 "$CLOG")"

# Kill at random moments while fio runs; restart at once, as a service manager would.
landed=0
for k in $(seq "$KILLS"); do
    sleep "$(awk -v s="$RANDOM" 'BEGIN { srand(s); printf "%.2f", 1.0 + rand() * 2.5 }')"
    kill -9 "$BPID"; wait "$BPID" 2>/dev/null
    r=$(grep -ac "FIO-ROUND" "$CLOG")
    grep -qa "FIO-ROUNDS" "$CLOG" || landed=$((landed + 1))
    echo "restart-e2e: kill $k during fio round $r"
    start_vdevd
done
sleep 3
touch "$WORK/stop"
wait $QPID; grc=$?
QPID=

rounds=$(grep -a "^FIO-ROUNDS" "$CLOG" | awk '{print $2}')
kerr=$(grep -a "^KERNEL-ERRORS" "$CLOG" | awk '{print $2}')
[ "$grc" = 0 ] && check PASS guest "fio verified $rounds rounds through $KILLS kills" \
               || check FAIL guest "$(grep -a '^GUEST-RESULT\|^FIO-FAIL' "$CLOG" | tail -n 3 | tr '\n' ' ') (exit $grc)"
[ "$landed" -ge "$KILLS" ] && check PASS kills "$landed kills while fio ran" || check FAIL kills "only $landed of $KILLS kills while fio ran"
[ "${kerr:-x}" = 0 ] && check PASS kernel-log "no I/O error, no hung task" || check FAIL kernel-log "${kerr:-no result} errors"
resub=0 tracked=0
for n in $(seq 2 "$RUN"); do
    grep -q "resubmitting" "$WORK/vdevd.$n.log" && resub=$((resub + 1))
    grep -q "queue 0 started" "$WORK/vdevd.$n.log" && tracked=$((tracked + 1))
done
[ "$tracked" = $((RUN - 1)) ] && check PASS reconnects "QEMU reconnected to all $((RUN - 1)) restarted vdevd; $resub resubmitted requests left in flight" \
                             || check FAIL reconnects "only $tracked of $((RUN - 1)) restarted vdevd served the guest"
if grep -q "not tracked\|in-flight region:" "$WORK"/vdevd.*.log; then check FAIL inflight-region "$(grep -h "not tracked\|in-flight region:" "$WORK"/vdevd.*.log | head -n 2)"; fi
kill "$BPID" 2>/dev/null; wait "$BPID" 2>/dev/null; BPID=

echo "==== blk-restart-e2e summary ===="
printf '%s\n' "${CHECKS[@]}"
if [ $FAILED = 0 ]; then echo "==== RESULT: PASS ===="; exit 0; fi
echo "==== RESULT: FAIL (console: $CLOG, logs: $WORK/vdevd.*.log) ===="
exit 1
