#!/bin/bash
# Boots a throw-away TCG guest that runs one test script and powers off.
#
#   scripts/run-guest.sh [options] GUEST_SCRIPT [-- EXTRA_QEMU_ARGS...]
#
#   GUEST_SCRIPT   absolute host path of a busybox-sh script; the guest sees the host root read-only
#                  at /host and runs /host$GUEST_SCRIPT (cwd = its folder). It must not live under
#                  the host's /tmp (the guest's own /tmp hides it). It should print a final line
#                  "GUEST-RESULT: PASS" or "GUEST-RESULT: FAIL <reason>".
#   --log FILE     console log (default: GUEST_SCRIPT's folder/console.log)
#   --timeout S    kill QEMU after S seconds (default 300)
#   --mem SIZE     guest memory, memfd shared so vhost-user backends can map it (default 512M)
#   --smp N        guest CPUs (default 2)
#   --append STR   extra kernel command line
#   --quiet        don't echo the console while it runs
#   EXTRA args     passed to QEMU as is, e.g.
#                  -chardev socket,id=c0,path=SOCK -device vhost-user-blk-pci,chardev=c0,num-queues=2
#
# Exit status: 0 guest printed "GUEST-RESULT: PASS"; 1 "GUEST-RESULT: FAIL ..."; 2 no result line
# (crash, boot failure); 124 timeout; 3 usage/setup error.
set -u -o pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG= TIMEOUT=300 MEM=512M SMP=2 APPEND= QUIET=0
while [ $# -gt 0 ]; do
    case "$1" in
        --log) LOG=$2; shift 2 ;;
        --timeout) TIMEOUT=$2; shift 2 ;;
        --mem) MEM=$2; shift 2 ;;
        --smp) SMP=$2; shift 2 ;;
        --append) APPEND=$2; shift 2 ;;
        --quiet) QUIET=1; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        --) shift; break ;;
        -*) echo "run-guest: unknown option $1" >&2; exit 3 ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || { echo "usage: $0 [options] GUEST_SCRIPT [-- QEMU_ARGS...]" >&2; exit 3; }
SCRIPT=$(realpath "$1"); shift
[ "${1:-}" = "--" ] && shift
[ -f "$SCRIPT" ] || { echo "run-guest: $SCRIPT not found" >&2; exit 3; }
case "$SCRIPT" in
    /tmp/*) echo "run-guest: $SCRIPT is under /tmp, which the guest cannot see over 9p" >&2; exit 3 ;;
    *" "*) echo "run-guest: script path must not contain spaces" >&2; exit 3 ;;
esac
LOG=${LOG:-$(dirname "$SCRIPT")/console.log}

# shellcheck source=guest-image.sh
source "$HERE/guest-image.sh" || { echo "run-guest: guest image build failed" >&2; exit 3; }

QEMU=${QEMU:-qemu-system-x86_64}
qemu_args=(
    -accel tcg -cpu max -smp "$SMP" -m "$MEM"
    -object "memory-backend-memfd,id=mem,size=$MEM,share=on"
    -machine q35,memory-backend=mem
    -nographic -no-reboot -nodefaults -serial stdio
    -kernel "$GUEST_KERNEL" -initrd "$GUEST_INITRD"
    -append "console=ttyS0 quiet panic=-1 vdevd.test=$SCRIPT $APPEND"
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on
    "$@"
)

: > "$LOG"
start=$(date +%s.%N)
if [ $QUIET -eq 1 ]; then
    timeout --kill-after=10 "$TIMEOUT" "$QEMU" "${qemu_args[@]}" < /dev/null > "$LOG" 2>&1
    qrc=$?
else
    timeout --kill-after=10 "$TIMEOUT" "$QEMU" "${qemu_args[@]}" < /dev/null 2>&1 | tee "$LOG" | sed -u 's/^/  [guest] /'
    qrc=${PIPESTATUS[0]}
fi
elapsed=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
tr -d '\r' < "$LOG" > "$LOG.tmp" && mv "$LOG.tmp" "$LOG"

result=$(grep -a '^GUEST-RESULT:' "$LOG" | tail -n1)
echo "run-guest: qemu exit $qrc after ${elapsed}s, log $LOG" >&2
if [ $qrc -eq 124 ] || [ $qrc -eq 137 ]; then
    echo "run-guest: TIMEOUT after ${TIMEOUT}s (${result:-no GUEST-RESULT})" >&2
    exit 124
fi
case "$result" in
    "GUEST-RESULT: PASS"*) exit 0 ;;
    "GUEST-RESULT: FAIL"*) echo "run-guest: $result" >&2; exit 1 ;;
    *) echo "run-guest: no GUEST-RESULT line (qemu exit $qrc); last console lines:" >&2
       tail -n 20 "$LOG" >&2; exit 2 ;;
esac
