#!/bin/bash
# vhost-user-blk live-migration end-to-end test: a guest writing with fio --verify on a vdevd disk is
# live-migrated between two QEMU processes on this machine, each with its own vdevd serving the same image.
#
#   Tests/E2E/blk-migrate-e2e.sh       VDEVD=.build/debug/vdevd, KEEP_WORK=1, VERBOSE=1
#
# The guest copies fio to its own RAM and unmounts the host's root (QEMU refuses to migrate with 9p mounted),
# then runs verified write rounds; the source is migrated while they run (QMP `migrate`, dirty pages of vdevd's
# writes logged through VHOST_F_LOG_ALL), the destination carries on with the other vdevd.
# VSOCK=1 adds a vhost-user-vsock device on a second vdevd per side (QEMU 7.2 refuses to migrate it).
# Checks: QEMU migrated (query-migrate: completed); every fio round verified, on both sides of the migration;
# the source vdevd logged dirty pages (logging was on) and the destination vdevd served the guest after.
# Exit status: 0 all passed, 1 a check failed, 2 setup error.
set -u -o pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VDEVD=${VDEVD:-.build/debug/vdevd}
GUEST_TIMEOUT=${GUEST_TIMEOUT:-300}
ROUNDS=${ROUNDS:-6}
cd "$REPO"
CHECKS=() FAILED=0
check() { local st=$1 name=$2; shift 2; CHECKS+=("$(printf '%-4s %-20s %s' "$st" "$name" "$*")"); [ "$st" = FAIL ] && FAILED=1; echo "migrate-e2e: $st $name $*"; return 0; }
die() { echo "migrate-e2e: SETUP ERROR: $*" >&2; exit 2; }
[ -x "$VDEVD" ] || die "VDEVD=$VDEVD not executable"
command -v python3 >/dev/null || die "python3 missing"
# shellcheck source=../../scripts/guest-image.sh
source "$REPO/scripts/guest-image.sh" || die "guest image build failed"
mkdir -p "$REPO/.cache"
# shellcheck source=../../scripts/e2e-workdir.sh
source "$REPO/scripts/e2e-workdir.sh"
WORK=$(e2e_workdir migrate)
IMG=$WORK/disk.img
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    if [ "$FAILED" = 0 ] && [ "${KEEP_WORK:-0}" != 1 ]; then rm -rf "$WORK"; else echo "migrate-e2e: work dir kept: $WORK"; fi
}
trap cleanup EXIT
trap 'exit 2' INT TERM

dd if=/dev/urandom of="$IMG" bs=1M count=64 status=none || die "dd"
for side in src dst; do
    if [ "${VSOCK:-0}" = 1 ]; then
        # VSOCK=1: the VM also has a vsock device (guest CID 3) on vdevd. QEMU 7.2 itself refuses to migrate a VM
        # with vhost-user-vsock ("State blocked by non-migratable device"), so this is off by default.
        "$VDEVD" --export "vhost-user-vsock,id=vm3,guest-cid=3,socket=$WORK/$side-vsock.sock,uds-path=$WORK/$side.vsock" \
            > "$WORK/vdevd-vsock-$side.log" 2>&1 &
        PIDS+=($!)
        for _ in $(seq 100); do [ -S "$WORK/$side-vsock.sock" ] && break; sleep 0.05; done
    fi
    if [ "${BACKEND:-vdevd}" = qsd ]; then  # the reference, for comparison (not in CI)
        qemu-storage-daemon --blockdev "driver=file,node-name=d0,filename=$IMG,locking=off" \
            --export "type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=$WORK/$side.sock,writable=on,num-queues=2" \
            > "$WORK/vdevd-$side.log" 2>&1 &
        PIDS+=($!)
        for _ in $(seq 100); do [ -S "$WORK/$side.sock" ] && break; sleep 0.05; done
        continue
    fi
    "$VDEVD" --export "vhost-user-blk,id=disk0,path=$IMG,socket=$WORK/$side.sock,num-queues=2" > "$WORK/vdevd-$side.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do grep -q "vdevd ready" "$WORK/vdevd-$side.log" 2>/dev/null && break; sleep 0.05; done
    grep -q "vdevd ready" "$WORK/vdevd-$side.log" || die "vdevd ($side) did not start: $(cat "$WORK/vdevd-$side.log")"
done

# fio and the libraries it needs, copied into the guest's RAM before it lets go of the host's root.
mkdir -p "$WORK/bundle"
cp /usr/bin/fio "$WORK/bundle/"
ldd /usr/bin/fio | awk '/=> \// { print $3 } /^\s*\/lib/ { print $1 }' | while read -r l; do cp -L "$l" "$WORK/bundle/"; done
cp -L /lib64/ld-linux-x86-64.so.2 "$WORK/bundle/"

cat > "$WORK/guest.sh" <<GUEST
mkdir -p /tmp/b && cp bundle/* /tmp/b/ && cat > /tmp/stage2.sh <<'STAGE2'
cd /
umount /host || { echo "GUEST-RESULT: FAIL cannot unmount /host"; exit 1; }
echo "MIGRATE-READY"
sleep ${IDLE_FIRST:-0}
fails=0
for round in \$(seq $ROUNDS); do
    echo "FIO-ROUND \$round"
    /tmp/b/ld-linux-x86-64.so.2 --library-path /tmp/b /tmp/b/fio --name=v --filename=/dev/vda --direct=1 \\
        --ioengine=libaio --iodepth=32 --rw=randwrite --bs=4k --size=4M --numjobs=2 --offset_increment=8M \\
        --cpus_allowed=0-1 --cpus_allowed_policy=split --verify=crc32c --verify_fatal=1 --do_verify=1 \\
        --randseed=\$round --thread --group_reporting --output=/tmp/fio.out > /tmp/fio.err 2>&1
    rc=\$?
    if [ \$rc != 0 ] || ! grep -q 'err= 0' /tmp/fio.out; then fails=\$((fails + 1)); echo "FIO-FAIL round \$round rc=\$rc"; tail -n 8 /tmp/fio.out /tmp/fio.err; fi
done
errs=\$(dmesg | grep -ciE 'I/O error|blocked for more than')
echo "FIO-ROUNDS $ROUNDS failed \$fails kernel-errors \$errs"
[ \$fails = 0 ] && [ \$errs = 0 ] && echo "GUEST-RESULT: PASS" || echo "GUEST-RESULT: FAIL fio=\$fails kernel=\$errs"
STAGE2
cd /tmp
exec sh /tmp/stage2.sh
GUEST

qmp() {  # qmp SOCKET COMMAND_JSON...: runs the commands, prints each reply
    python3 - "$@" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rw")
def rd():
    while True:
        m = json.loads(f.readline())
        if "event" not in m: return m
rd()
for c in ["{\"execute\": \"qmp_capabilities\"}"] + sys.argv[2:]:
    f.write(c + "\n"); f.flush()
    print(json.dumps(rd()))
PY
}

rg_opts=(--timeout "$GUEST_TIMEOUT" --mem 256M --smp "${GUEST_SMP:-2}")
[ "${VERBOSE:-0}" = 1 ] || rg_opts+=(--quiet)
dev() {
    echo "-chardev socket,id=c0,path=$WORK/$1.sock -device vhost-user-blk-pci,chardev=c0,num-queues=2"
    [ "${VSOCK:-0}" = 1 ] && echo "-chardev socket,id=c1,path=$WORK/$1-vsock.sock -device vhost-user-vsock-pci,chardev=c1"
}
# shellcheck disable=SC2046
"$REPO/scripts/run-guest.sh" "${rg_opts[@]}" --log "$WORK/console-dst.log" "$WORK/guest.sh" -- \
    $(dev dst) -qmp "unix:$WORK/qmp-dst.sock,server=on,wait=off" -incoming "unix:$WORK/mig.sock" &
DPID=$!; PIDS+=($DPID)
# shellcheck disable=SC2046
# The source QEMU is quit after the switch-over, before its guest says anything: its own report is noise.
"$REPO/scripts/run-guest.sh" "${rg_opts[@]}" --log "$WORK/console-src.log" "$WORK/guest.sh" -- \
    $(dev src) -qmp "unix:$WORK/qmp-src.sock,server=on,wait=off" > "$WORK/run-guest-src.out" 2>&1 &
SPID=$!; PIDS+=($SPID)
START_MARK="FIO-ROUND 1"
[ "${IDLE_FIRST:-0}" != 0 ] && START_MARK="MIGRATE-READY"  # migrate while the disk is idle (diagnosis)
for _ in $(seq 1500); do grep -qa "$START_MARK" "$WORK/console-src.log" 2>/dev/null && break; kill -0 $SPID 2>/dev/null || break; sleep 0.1; done
grep -qa "$START_MARK" "$WORK/console-src.log" || die "the guest never got to '$START_MARK': $(tail -n 15 "$WORK/console-src.log")"

qmp "$WORK/qmp-src.sock" "{\"execute\": \"migrate\", \"arguments\": {\"uri\": \"unix:$WORK/mig.sock\"}}" > "$WORK/qmp-migrate.txt"
status=none
for _ in $(seq 600); do
    status=$(qmp "$WORK/qmp-src.sock" '{"execute": "query-migrate"}' | tail -n 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["return"].get("status","none"))')
    case "$status" in completed|failed|cancelled) break ;; esac
    sleep 0.5
done
[ "$status" = completed ] && check PASS migrated "query-migrate: completed" \
                         || check FAIL migrated "query-migrate: $status; $(cat "$WORK/qmp-migrate.txt")"
r=$(grep -ac "FIO-ROUND" "$WORK/console-src.log")
check INFO "rounds-at-source" "$r of $ROUNDS fio rounds started before the switch-over"
qmp "$WORK/qmp-src.sock" '{"execute": "quit"}' > /dev/null 2>&1
wait $DPID; grc=$?
[ "$grc" = 0 ] && check PASS guest "$(grep -a '^FIO-ROUNDS' "$WORK/console-dst.log")" \
               || check FAIL guest "$(grep -a '^GUEST-RESULT\|^FIO-FAIL\|^FIO-ROUNDS' "$WORK/console-dst.log" | tr '\n' ' ') (exit $grc)"
if [ "${BACKEND:-vdevd}" = vdevd ]; then  # what vdevd's logs show (qemu-storage-daemon logs nothing of it)
    grep -q "dirty-page logging on" "$WORK/vdevd-src.log" && check PASS src-logging "$(grep -m1 'dirty log:' "$WORK/vdevd-src.log" | sed 's/.*\] //')" \
                                                       || check FAIL src-logging "the source vdevd never logged dirty pages"
    grep -q "queue 0 started" "$WORK/vdevd-dst.log" && check PASS dst-served "the destination vdevd started the rings" \
                                                     || check FAIL dst-served "the destination vdevd never served the guest"
fi

echo "==== blk-migrate-e2e summary ===="
printf '%s\n' "${CHECKS[@]}"
if [ $FAILED = 0 ]; then echo "==== RESULT: PASS ===="; exit 0; fi
echo "==== RESULT: FAIL (consoles: $WORK/console-*.log, logs: $WORK/vdevd-*.log) ===="
exit 1
