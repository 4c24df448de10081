#!/bin/bash
# vhost-user-net end-to-end test: two real Linux guests (QEMU TCG) on one vdevd switch.
#
#   Tests/E2E/net-e2e.sh            VDEVD=.build/debug/vdevd, VDEVD_ARGS, KEEP_WORK=1, VERBOSE=1
#
# Guest A (169.254.10.1, mac=52:54:00:0a:00:01) and guest B (169.254.10.2, mac=52:54:00:0a:00:02) are
# ports of switch sw0, each pinned to its MAC. Link-local addresses only. Checks:
#   ping:      A and B ping each other (ARP is flooded and learned, replies are unicast), no loss
#   tcp:       B sends 16 MiB over TCP to A, then A sends 16 MiB to B; each receiver compares the sha256 with
#              the host's. A's NIC has guest_tso4/6=off and guest_csum=off, so B's TSO frames are segmented and
#              checksummed in software on their way to A, while A's reach B whole (GUEST_TSO4 passthrough)
#   uplink:    the switch's tap uplink, moved by the test into a network namespace of its own at
#              169.254.10.100: A pings it and sends it 4 MiB over TCP; the host checks the sha256 of what the
#              namespace's listener got
#   counters:  vdevd's port totals at exit show the frames both ways, software segmentation for A only, and
#              no drops for spoofing
# Exit status: 0 all passed, 1 a check failed, 2 setup error.
set -u -o pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VDEVD=${VDEVD:-.build/debug/vdevd}
GUEST_TIMEOUT=${GUEST_TIMEOUT:-300}
cd "$REPO"
CHECKS=() FAILED=0
check() { local st=$1 name=$2; shift 2; CHECKS+=("$(printf '%-4s %-24s %s' "$st" "$name" "$*")"); [ "$st" = FAIL ] && FAILED=1; echo "net-e2e: $st $name $*"; return 0; }
die() { echo "net-e2e: SETUP ERROR: $*" >&2; exit 2; }
[ -x "$VDEVD" ] || die "VDEVD=$VDEVD not executable"
command -v socat >/dev/null || die "socat missing (scripts/install-deps.sh)"
# shellcheck source=../../scripts/guest-image.sh
source "$REPO/scripts/guest-image.sh" || die "guest image build failed"

mkdir -p "$REPO/.cache"
# shellcheck source=../../scripts/e2e-workdir.sh
source "$REPO/scripts/e2e-workdir.sh"
WORK=$(e2e_workdir net)
BPID= NS=vdevd-net-e2e-$$ TAP=vdtap$$ NSPID=
cleanup() {
    [ -n "$NSPID" ] && kill "$NSPID" 2>/dev/null
    ip netns del "$NS" 2>/dev/null
    if [ -n "$BPID" ] && kill -0 "$BPID" 2>/dev/null; then kill "$BPID"; sleep 0.5; kill -9 "$BPID" 2>/dev/null; fi
    if [ "$FAILED" = 0 ] && [ "${KEEP_WORK:-0}" != 1 ]; then rm -rf "$WORK"; else echo "net-e2e: work dir kept: $WORK"; fi
}
trap cleanup EXIT
trap 'exit 2' INT TERM

dd if=/dev/urandom of="$WORK/data.bin" bs=1M count=16 status=none
DATA_SHA=$(sha256sum < "$WORK/data.bin" | cut -d' ' -f1)
dd if=/dev/urandom of="$WORK/up.bin" bs=1M count=4 status=none
UP_SHA=$(sha256sum < "$WORK/up.bin" | cut -d' ' -f1)
command -v ip >/dev/null || die "ip (iproute2) missing"

BLOG=$WORK/vdevd.log
# shellcheck disable=SC2086
"$VDEVD" ${VDEVD_ARGS:-} --switch "id=sw0,uplink=tap:$TAP" \
    --export "vhost-user-net,id=vmA,socket=$WORK/a.sock,switch=sw0,mac=52:54:00:0a:00:01" \
    --export "vhost-user-net,id=vmB,socket=$WORK/b.sock,switch=sw0,mac=52:54:00:0a:00:02,mtu=4000" \
    > "$BLOG" 2>&1 &
BPID=$!
for _ in $(seq 100); do [ -S "$WORK/a.sock" ] && [ -S "$WORK/b.sock" ] && break; sleep 0.1; done
[ -S "$WORK/b.sock" ] || { cat "$BLOG"; die "vdevd did not create its sockets"; }
# The uplink goes into a namespace of the test's own; nothing else on this machine sees its traffic.
ip netns add "$NS" || die "ip netns add"
ip link set "$TAP" netns "$NS" || { cat "$BLOG"; die "tap $TAP not there"; }
ip -n "$NS" link set lo up
ip -n "$NS" addr add 169.254.10.100/16 dev "$TAP"
ip -n "$NS" link set "$TAP" up
ip netns exec "$NS" socat -u TCP-LISTEN:5002,reuseaddr CREATE:"$WORK/up-in.bin" > "$WORK/ns-listener.out" 2>&1 &
NSPID=$!

LDSO=$(realpath /lib64/ld-linux-x86-64.so.2)
LIBPATH=""
for d in /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu; do LIBPATH="$LIBPATH${LIBPATH:+:}/host$(realpath "$d")"; done
cat > "$WORK/guest-env.sh" <<ENV
HOSTRUN='/host$LDSO --library-path $LIBPATH'
DATA_SHA=$DATA_SHA
ENV

# Common guest part: the NIC up at a link-local address, then wait until the peer answers a ping.
cat > "$WORK/guest-net.sh" <<'GUEST'
. ./guest-env.sh
FAILS=""
ck() { echo "CHECK $1 $2 ${3:-}"; [ "$1" = FAIL ] && FAILS="$FAILS $2"; return 0; }
socat() { $HOSTRUN /host/usr/bin/socat "$@"; }
netup() {
    dev=$(ls /sys/class/net | grep -v '^lo$' | head -1)
    [ -n "$dev" ] && ck PASS nic "$dev $(cat /sys/class/net/$dev/address)" || { ck FAIL nic "no network device"; return 1; }
    ip link set "$dev" up && ip addr add "$1/16" dev "$dev" || ck FAIL ip-setup "ip on $dev"
}
waitpeer() {
    i=0
    while [ $i -lt 120 ]; do ping -c 1 -W 1 "$1" >/dev/null 2>&1 && return 0; i=$((i + 1)); done
    return 1
}
GUEST

cat > "$WORK/guest-a.sh" <<'GUEST'
. ./guest-net.sh
netup 169.254.10.1
# The receiver listens before anything else, so B can connect as soon as it reaches us.
(socat -u TCP-LISTEN:5000,reuseaddr CREATE:/tmp/in.bin; echo done > /tmp/in.done) &
LPID=$!
if waitpeer 169.254.10.2; then
    # -w: an overall deadline (B's transfer may be running; TCG is slow), every reply is still counted.
    out=$(ping -c 5 -w 60 169.254.10.2 2>&1 | grep 'packets transmitted')
    case "$out" in *" 0% packet loss"*) ck PASS ping "$out" ;; *) ck FAIL ping "$out" ;; esac
else
    ck FAIL ping "169.254.10.2 never answered"
fi
t0=$(date +%s)
wait $LPID
h=$(sha256sum /tmp/in.bin | cut -d' ' -f1)
n=$(stat -c %s /tmp/in.bin)
[ "$h" = "$DATA_SHA" ] && ck PASS tcp-data "16 MiB from B intact ($n bytes, $(( $(date +%s) - t0 ))s)" || ck FAIL tcp-data "sha $h, $n bytes"
# Then the other way (B listens on 5001 since before its own send).
i=0
until socat -u FILE:data.bin TCP:169.254.10.2:5001,connect-timeout=5 2>/tmp/err; do
    i=$((i + 1))
    [ $i -lt 30 ] || { ck FAIL tcp-send "$(cat /tmp/err)"; break; }
    sleep 1
done
[ $i -lt 30 ] && ck PASS tcp-send "16 MiB sent to B"
# The uplink: a namespace on the host behind the switch's tap.
out=$(ping -c 3 -w 60 169.254.10.100 2>&1 | grep 'packets transmitted')
case "$out" in *" 0% packet loss"*) ck PASS uplink-ping "$out" ;; *) ck FAIL uplink-ping "$out" ;; esac
socat -u FILE:up.bin TCP:169.254.10.100:5002,connect-timeout=10 2>/tmp/err && ck PASS uplink-send "4 MiB sent to the namespace" \
    || ck FAIL uplink-send "$(cat /tmp/err)"
if [ -z "$FAILS" ]; then echo "GUEST-RESULT: PASS"; else echo "GUEST-RESULT: FAIL$FAILS"; fi
GUEST

cat > "$WORK/guest-b.sh" <<'GUEST'
. ./guest-net.sh
netup 169.254.10.2
# QEMU's host_mtu=4000 reached the guest: VIRTIO_NET_F_MTU offered by vdevd, NET_SET_MTU taken (mtu=4000).
m=$(cat /sys/class/net/$dev/mtu)
[ "$m" = 4000 ] && ck PASS host-mtu "$dev mtu $m" || ck FAIL host-mtu "$dev mtu $m, want 4000"
(socat -u TCP-LISTEN:5001,reuseaddr CREATE:/tmp/in.bin) &
LPID=$!
if waitpeer 169.254.10.1; then
    out=$(ping -c 5 -w 60 169.254.10.1 2>&1 | grep 'packets transmitted')
    case "$out" in *" 0% packet loss"*) ck PASS ping "$out" ;; *) ck FAIL ping "$out" ;; esac
else
    ck FAIL ping "169.254.10.1 never answered"
fi
i=0
until socat -u FILE:data.bin TCP:169.254.10.1:5000,connect-timeout=5 2>/tmp/err; do
    i=$((i + 1))
    [ $i -lt 30 ] || { ck FAIL tcp-send "$(cat /tmp/err)"; break; }
    sleep 1
done
[ $i -lt 30 ] && ck PASS tcp-send "16 MiB sent to A"
wait $LPID
h=$(sha256sum /tmp/in.bin | cut -d' ' -f1)
n=$(stat -c %s /tmp/in.bin)
[ "$h" = "$DATA_SHA" ] && ck PASS tcp-data "16 MiB from A intact ($n bytes)" || ck FAIL tcp-data "sha $h, $n bytes"
if [ -z "$FAILS" ]; then echo "GUEST-RESULT: PASS"; else echo "GUEST-RESULT: FAIL$FAILS"; fi
GUEST

rg_opts=(--timeout "$GUEST_TIMEOUT" --smp "${GUEST_SMP:-1}" --mem 256M)
[ "${VERBOSE:-0}" = 1 ] || rg_opts+=(--quiet)
# vectors=0: with MSI-X, QEMU 7.2 under TCG crashes when the guest starts a vhost-user-net device (real-guests.md).
nic() { echo "-chardev socket,id=c0,path=$1 -netdev vhost-user,id=n0,chardev=c0 -device virtio-net-pci,netdev=n0,mac=$2,vectors=0$3"; }
T1=$(date +%s)
# shellcheck disable=SC2046
"$REPO/scripts/run-guest.sh" "${rg_opts[@]}" --log "$WORK/console-a.log" "$WORK/guest-a.sh" -- $(nic "$WORK/a.sock" 52:54:00:0a:00:01 ",guest_tso4=off,guest_tso6=off,guest_csum=off") &
GA=$!
# shellcheck disable=SC2046
"$REPO/scripts/run-guest.sh" "${rg_opts[@]}" --log "$WORK/console-b.log" "$WORK/guest-b.sh" -- $(nic "$WORK/b.sock" 52:54:00:0a:00:02 ",host_mtu=4000") &
GB=$!
wait $GA; ra=$?
wait $GB; rb=$?
T2=$(date +%s)
[ $ra = 0 ] && check PASS guest-a "($((T2 - T1))s)" || check FAIL guest-a "exit $ra: $(grep -a GUEST-RESULT "$WORK/console-a.log" | tail -1)"
[ $rb = 0 ] && check PASS guest-b "" || check FAIL guest-b "exit $rb: $(grep -a GUEST-RESULT "$WORK/console-b.log" | tail -1)"
for f in console-a console-b; do
    while read -r _ st name detail; do CHECKS+=("$(printf '%-4s %-24s %s' "$st" "${f#console-}:$name" "$detail")"); done < <(grep -a '^CHECK ' "$WORK/$f.log")
done
wait "$NSPID"; NSPID=
h=$(sha256sum < "$WORK/up-in.bin" 2>/dev/null | cut -d' ' -f1)
[ "$h" = "$UP_SHA" ] && check PASS h:uplink-data "4 MiB from guest A through the tap intact" \
    || check FAIL h:uplink-data "sha '$h', $(stat -c %s "$WORK/up-in.bin" 2>/dev/null) bytes"
kill "$BPID"; wait "$BPID"; brc=$?; BPID=
[ $brc = 0 ] && check PASS h:vdevd-exit "status 0" || check FAIL h:vdevd-exit "status $brc"
# The switch's own account: frames both ways through each port, none dropped as spoofed.
for p in vmA vmB; do
    line=$(grep "export=$p" "$BLOG" | grep 'switch port totals' | sed 's/.*totals: //')
    rx=$(echo "$line" | grep -o 'rxFrames=[0-9]*' | cut -d= -f2)
    tx=$(echo "$line" | grep -o 'txFrames=[0-9]*' | cut -d= -f2)
    seg=$(echo "$line" | grep -o 'segmented=[0-9]*' | cut -d= -f2)
    if [ $p = vmA ]; then want_seg=yes; else want_seg=; fi
    if [ "${rx:-0}" -gt 0 ] && [ "${tx:-0}" -gt 0 ] && ! echo "$line" | grep -q dropSpoofed \
        && [ "${want_seg:+y}" = "${seg:+y}" ] && ! echo "$line" | grep -q dropUnsegmentable; then
        check PASS "h:$p-counters" "$line"
    else
        check FAIL "h:$p-counters" "'$line'"
    fi
done

line=$(grep "uplink $TAP totals" "$BLOG" | sed 's/.*totals: //')
echo "$line" | grep -q 'rxFrames=' && echo "$line" | grep -q 'txFrames=' && check PASS h:uplink-counters "$line" \
    || check FAIL h:uplink-counters "'$line'"

echo
echo "==== net-e2e summary ($((T2 - T1))s) ===="
printf '%s\n' "${CHECKS[@]}"
if [ $FAILED = 0 ]; then echo "==== RESULT: PASS ===="; exit 0; fi
echo "==== RESULT: FAIL ===="; tail -30 "$BLOG"; exit 1
