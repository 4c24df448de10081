#!/bin/bash
# vhost-user-vsock end-to-end test: two real Linux guests (QEMU TCG) on vdevd's vsock exports.
#
#   Tests/E2E/vsock-e2e.sh            VDEVD=.build/debug/vdevd, VDEVD_ARGS, KEEP_WORK=1, VERBOSE=1
#
# Guest A (CID 3) and guest B (CID 4) share group g1. Checks:
#   guest->host: A connects to host port 5000 (bridged to <uds>_5000), sends 16 MiB, half-closes, and
#                still reads the host's answer; host compares the sha256
#   host->guest: the host connects through uds-path with CONNECT 6000, sends 16 MiB and half-closes;
#                A compares what it got, answers with its sha256 on the same connection
#   refusal:     A connecting to a host port nobody serves fails (RST)
#   siblings:    B sends 4 MiB to A's CID, port 7777, with no host socket in between
#   concurrent:  (issue 8) CONC_ROUNDS times (default 3), all at once: A sends CONC_MB MiB (default 4) to host
#                port 5001 where `socat ... SYSTEM:tee` keeps a copy and echoes every byte back, A checks
#                the echo's sha256; and the host opens three connections (CONNECT 1234-1236) that each move
#                CONC_MB MiB both ways to socat listeners in A, both ends checking the sha256
# Exit status: 0 all passed, 1 a check failed, 2 setup error.
set -u -o pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VDEVD=${VDEVD:-.build/debug/vdevd}
GUEST_TIMEOUT=${GUEST_TIMEOUT:-240}
CONC_ROUNDS=${CONC_ROUNDS:-3}
CONC_MB=${CONC_MB:-4}
cd "$REPO"
CHECKS=() FAILED=0
check() { local st=$1 name=$2; shift 2; CHECKS+=("$(printf '%-4s %-24s %s' "$st" "$name" "$*")"); [ "$st" = FAIL ] && FAILED=1; echo "vsock-e2e: $st $name $*"; return 0; }
die() { echo "vsock-e2e: SETUP ERROR: $*" >&2; exit 2; }
[ -x "$VDEVD" ] || die "VDEVD=$VDEVD not executable"
command -v socat >/dev/null || die "socat missing (scripts/install-deps.sh)"
# shellcheck source=../../scripts/guest-image.sh
source "$REPO/scripts/guest-image.sh" || die "guest image build failed"

mkdir -p "$REPO/.cache"
# shellcheck source=../../scripts/e2e-workdir.sh
source "$REPO/scripts/e2e-workdir.sh"
WORK=$(e2e_workdir vsock)
BPID= HPIDS=()
cleanup() {
    for p in "${HPIDS[@]}"; do kill "$p" 2>/dev/null; done
    if [ -n "$BPID" ] && kill -0 "$BPID" 2>/dev/null; then kill "$BPID"; sleep 0.5; kill -9 "$BPID" 2>/dev/null; fi
    if [ "$FAILED" = 0 ] && [ "${KEEP_WORK:-0}" != 1 ]; then rm -rf "$WORK"; else echo "vsock-e2e: work dir kept: $WORK"; fi
}
trap cleanup EXIT
trap 'exit 2' INT TERM

dd if=/dev/urandom of="$WORK/g2h.bin" bs=1M count=16 status=none
dd if=/dev/urandom of="$WORK/h2g.bin" bs=1M count=16 status=none
dd if=/dev/urandom of="$WORK/sib.bin" bs=1M count=4 status=none
G2H_SHA=$(sha256sum < "$WORK/g2h.bin" | cut -d' ' -f1)
H2G_SHA=$(sha256sum < "$WORK/h2g.bin" | cut -d' ' -f1)
SIB_SHA=$(sha256sum < "$WORK/sib.bin" | cut -d' ' -f1)
dd if=/dev/urandom of="$WORK/conc-g.bin" bs=1M count="$CONC_MB" status=none
dd if=/dev/urandom of="$WORK/conc-h.bin" bs=1M count="$CONC_MB" status=none
CONC_G_SHA=$(sha256sum < "$WORK/conc-g.bin" | cut -d' ' -f1)
CONC_H_SHA=$(sha256sum < "$WORK/conc-h.bin" | cut -d' ' -f1)
CONC_ECHO_SHA=$(for _ in $(seq "$CONC_ROUNDS"); do cat "$WORK/conc-g.bin"; done | sha256sum | cut -d' ' -f1)

BLOG=$WORK/vdevd.log
# shellcheck disable=SC2086
"$VDEVD" ${VDEVD_ARGS:-} \
    --export "vhost-user-vsock,id=vm3,guest-cid=3,socket=$WORK/vm3.sock,uds-path=$WORK/v3.vsock,groups=g1" \
    --export "vhost-user-vsock,id=vm4,guest-cid=4,socket=$WORK/vm4.sock,uds-path=$WORK/v4.vsock,groups=g1" \
    > "$BLOG" 2>&1 &
BPID=$!
for _ in $(seq 100); do [ -S "$WORK/vm3.sock" ] && [ -S "$WORK/vm4.sock" ] && break; sleep 0.1; done
[ -S "$WORK/vm4.sock" ] || { cat "$BLOG"; die "vdevd did not create its sockets"; }

# Host services: a receiver at <uds>_5000 for the guest's connection.
python3 Tests/E2E/vsock_host.py serve "$WORK/v3.vsock_5000" "$WORK/from-guest.bin" > "$WORK/serve.out" 2>&1 &
HPIDS+=($!)
# The echo peer of the concurrent phase: keeps a copy of every connection (one per round) and echoes it.
socat UNIX-LISTEN:"$WORK/v3.vsock_5001",fork SYSTEM:"tee -a $WORK/echo-copy.bin" > "$WORK/echo.out" 2>&1 &
HPIDS+=($!)

LDSO=$(realpath /lib64/ld-linux-x86-64.so.2)
LIBPATH=""
for d in /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu; do LIBPATH="$LIBPATH${LIBPATH:+:}/host$(realpath "$d")"; done
cat > "$WORK/guest-env.sh" <<ENV
HOSTRUN='/host$LDSO --library-path $LIBPATH'
H2G_SHA=$H2G_SHA SIB_SHA=$SIB_SHA
CONC_ROUNDS=$CONC_ROUNDS CONC_G_SHA=$CONC_G_SHA CONC_H_SHA=$CONC_H_SHA
ENV

cat > "$WORK/guest-a.sh" <<'GUEST'
. ./guest-env.sh
FAILS=""
ck() { echo "CHECK $1 $2 ${3:-}"; [ "$1" = FAIL ] && FAILS="$FAILS $2"; return 0; }
socat() { $HOSTRUN /host/usr/bin/socat "$@"; }
[ -e /dev/vsock ] && ck PASS vsock-dev "/dev/vsock present" || ck FAIL vsock-dev "no /dev/vsock"
# Listeners first, so the host and guest B find them.
socat -u VSOCK-LISTEN:7777 CREATE:/tmp/sib.bin &
SIBPID=$!
(socat -t 60 VSOCK-LISTEN:6000 SYSTEM:'cat > /tmp/h2g.bin && sha256sum /tmp/h2g.bin') &
H2GPID=$!
# guest -> host through <uds>_5000, with the host's answer after our half-close
out=$(socat -t 30 - VSOCK-CONNECT:2:5000 < g2h.bin 2>&1)
[ "$out" = "thanks" ] && ck PASS g2h-answer "host answered after half-close" || ck FAIL g2h-answer "got '$out'"
# host port with no listener: the connection is refused
if socat -u FILE:/dev/null VSOCK-CONNECT:2:7000 2>/tmp/rst.err; then ck FAIL refused "connect to port 7000 succeeded"
else ck PASS refused "$(head -c 120 /tmp/rst.err)"; fi
wait $H2GPID
h=$(sha256sum /tmp/h2g.bin | cut -d' ' -f1)
[ "$h" = "$H2G_SHA" ] && ck PASS h2g-data "16 MiB from the host intact" || ck FAIL h2g-data "sha $h"
wait $SIBPID
h=$(sha256sum /tmp/sib.bin | cut -d' ' -f1)
[ "$h" = "$SIB_SHA" ] && ck PASS sibling-data "4 MiB from guest B intact" || ck FAIL sibling-data "sha $h"
# Concurrent phase (issue 8): an echo through the host beside three host-initiated two-way flows.
r=1
while [ $r -le $CONC_ROUNDS ]; do
    LP=""
    for p in 1234 1235 1236; do
        socat -t 120 VSOCK-LISTEN:$p SYSTEM:"cat conc-g.bin & sha256sum > /tmp/in-$p-$r; wait" &
        LP="$LP $!"
    done
    t0=$(date +%s)
    h=$(socat -t 120 - VSOCK-CONNECT:2:5001 < conc-g.bin | sha256sum | cut -d' ' -f1)
    [ "$h" = "$CONC_G_SHA" ] && ck PASS conc-echo-$r "echo through the host intact ($(( $(date +%s) - t0 ))s)" \
        || ck FAIL conc-echo-$r "sha $h"
    for pid in $LP; do wait $pid; done
    for p in 1234 1235 1236; do
        h=$(cut -d' ' -f1 /tmp/in-$p-$r 2>/dev/null)
        [ "$h" = "$CONC_H_SHA" ] && ck PASS conc-in-$p-$r "host flow intact" || ck FAIL conc-in-$p-$r "sha '$h'"
    done
    r=$((r + 1))
done
if [ -z "$FAILS" ]; then echo "GUEST-RESULT: PASS"; else echo "GUEST-RESULT: FAIL$FAILS"; fi
GUEST

cat > "$WORK/guest-b.sh" <<'GUEST'
. ./guest-env.sh
socat() { $HOSTRUN /host/usr/bin/socat "$@"; }
i=0
while [ $i -lt 60 ]; do
    if socat -u FILE:sib.bin VSOCK-CONNECT:3:7777 2>/tmp/err; then echo "CHECK PASS sibling-send 4 MiB to CID 3"; echo "GUEST-RESULT: PASS"; exit 0; fi
    i=$((i + 1)); sleep 1
done
echo "CHECK FAIL sibling-send $(cat /tmp/err)"
echo "GUEST-RESULT: FAIL sibling-send"
GUEST

rg_opts=(--timeout "$GUEST_TIMEOUT" --smp "${GUEST_SMP:-1}" --mem 256M)
[ "${VERBOSE:-0}" = 1 ] || rg_opts+=(--quiet)
T1=$(date +%s)
"$REPO/scripts/run-guest.sh" "${rg_opts[@]}" --log "$WORK/console-a.log" "$WORK/guest-a.sh" -- \
    -chardev "socket,id=c0,path=$WORK/vm3.sock" -device vhost-user-vsock-pci,chardev=c0 &
GA=$!
"$REPO/scripts/run-guest.sh" "${rg_opts[@]}" --log "$WORK/console-b.log" "$WORK/guest-b.sh" -- \
    -chardev "socket,id=c0,path=$WORK/vm4.sock" -device vhost-user-vsock-pci,chardev=c0 &
GB=$!
# The host connects to guest A's port 6000 once A listens (vdevd closes us without OK until then).
python3 Tests/E2E/vsock_host.py connect "$WORK/v3.vsock" 6000 "$WORK/h2g.bin" --retry 120 > "$WORK/connect.out" 2>&1 &
HC=$!
# The concurrent phase's host side: three two-way flows a round, each waiting until A listens.
(for r in $(seq "$CONC_ROUNDS"); do
    for p in 1234 1235 1236; do
        python3 Tests/E2E/vsock_host.py flow "$WORK/v3.vsock" $p "$WORK/conc-h.bin" --retry 200 > "$WORK/flow-$p-$r.out" 2>&1 &
    done
    wait
done) &
HF=$!
wait $GA; ra=$?
wait $GB; rb=$?
wait $HC; rc=$?
wait $HF
T2=$(date +%s)
[ $ra = 0 ] && check PASS guest-a "($((T2 - T1))s)" || check FAIL guest-a "exit $ra: $(grep -a GUEST-RESULT "$WORK/console-a.log" | tail -1)"
[ $rb = 0 ] && check PASS guest-b "" || check FAIL guest-b "exit $rb: $(grep -a GUEST-RESULT "$WORK/console-b.log" | tail -1)"
for f in console-a console-b; do
    while read -r _ st name detail; do CHECKS+=("$(printf '%-4s %-24s %s' "$st" "${f#console-}:$name" "$detail")"); done < <(grep -a '^CHECK ' "$WORK/$f.log")
done
# Host side: what the guest sent, and the guest's digest of what we sent (echoed on our connection).
h=$(cat "$WORK/serve.out" 2>/dev/null)
[ "$h" = "$G2H_SHA" ] && check PASS h:g2h-data "16 MiB from guest A intact" || check FAIL h:g2h-data "sha '$h'"
read -r ok port digest _ < "$WORK/connect.out" || true
[ "$rc" = 0 ] && [ "$ok" = OK ] && check PASS h:connect "OK $port" || check FAIL h:connect "$(head -c 200 "$WORK/connect.out")"
# The guest's answer is sha256sum's output line for what it received.
[ "${digest:-}" = "$H2G_SHA" ] && check PASS h:h2g-answer "guest's digest came back after our half-close" || check FAIL h:h2g-answer "got '${digest:-}'"
for r in $(seq "$CONC_ROUNDS"); do
    for p in 1234 1235 1236; do
        read -r ok port digest n _ < "$WORK/flow-$p-$r.out" || true
        [ "${ok:-}" = OK ] && [ "${digest:-}" = "$CONC_G_SHA" ] && check PASS h:conc-out-$p-$r "$n bytes from the guest intact" \
            || check FAIL h:conc-out-$p-$r "$(head -c 200 "$WORK/flow-$p-$r.out")"
    done
done
h=$(sha256sum < "$WORK/echo-copy.bin" 2>/dev/null | cut -d' ' -f1)
[ "$h" = "$CONC_ECHO_SHA" ] && check PASS h:conc-echo-copy "the echo peer got all $CONC_ROUNDS streams intact" \
    || check FAIL h:conc-echo-copy "sha '$h', $(stat -c %s "$WORK/echo-copy.bin" 2>/dev/null) bytes"
grep -a "stall:" "$BLOG" | head -5 | while read -r l; do echo "vsock-e2e: INFO vdevd logged: $l"; done
kill "$BPID"; wait "$BPID"; brc=$?; BPID=
[ $brc = 0 ] && check PASS h:vdevd-exit "status 0" || check FAIL h:vdevd-exit "status $brc"
grep -q "queue 1 totals" "$BLOG" && CHECKS+=("INFO $(grep 'export=vm3' "$BLOG" | grep 'queue 1 totals' | sed 's/.*totals: //')")

echo
echo "==== vsock-e2e summary ($((T2 - T1))s) ===="
printf '%s\n' "${CHECKS[@]}"
if [ $FAILED = 0 ]; then echo "==== RESULT: PASS ===="; exit 0; fi
echo "==== RESULT: FAIL ===="; tail -30 "$BLOG"; exit 1
