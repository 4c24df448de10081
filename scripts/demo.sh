#!/bin/bash
# Runs vdevd from the example config contrib/demo.toml in a temporary folder (a sparse 1 GiB disk and a vsock
# device for guest CID 3), ready for QEMU, with its management socket and metrics. Ctrl-C stops it (and
# removes the folder).
#   scripts/demo.sh [extra vdevd flags...]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export PATH="/opt/swift/usr/bin:$PATH"
dpkg-query -W -f='${Status}' liburing-dev 2>/dev/null | grep -q 'install ok installed' || scripts/install-deps.sh
swift build -c release --product vdevd
swift build -c release --product vdevctl
BIN="$REPO/.build/release"
DIR=$(mktemp -d /tmp/vdevd-demo.XXXXXX)
trap 'rm -rf "$DIR"' EXIT
truncate -s 1G "$DIR/disk0.img"
cat <<MSG
vdevd demo in $DIR, from contrib/demo.toml: image disk0.img (1 GiB, sparse), socket disk0.sock;
            vsock for guest CID 3 on vm3.sock, host side vm3.vsock (CONNECT <port>) and vm3.vsock_<port>
Attach a guest with:
  qemu-system-x86_64 -accel kvm -m 1G \\
    -object memory-backend-memfd,id=mem,size=1G,share=on -machine q35,memory-backend=mem \\
    -chardev socket,id=c0,path=$DIR/disk0.sock -device vhost-user-blk-pci,chardev=c0,num-queues=2 \\
    -chardev socket,id=c1,path=$DIR/vm3.sock -device vhost-user-vsock-pci,chardev=c1 ...
Manage it with:
  $BIN/vdevctl --socket $DIR/vdevd.sock list           (stats, add --export ..., remove ID, metrics)
  curl -s http://127.0.0.1:9464/metrics
MSG
cd "$DIR"
"$BIN/vdevd" --config "$REPO/contrib/demo.toml" "$@" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID; rm -rf "$DIR"' INT TERM EXIT
wait $PID
