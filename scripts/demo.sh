#!/bin/bash
# Runs vdevd on a demo image in a temporary folder, ready for QEMU. Ctrl-C stops it (and removes the folder).
#   scripts/demo.sh [extra vdevd flags...]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export PATH="/opt/swift/usr/bin:$PATH"
dpkg-query -W -f='${Status}' liburing-dev 2>/dev/null | grep -q 'install ok installed' || scripts/install-deps.sh
swift build -c release --product vdevd
DIR=$(mktemp -d /tmp/vdevd-demo.XXXXXX)
trap 'rm -rf "$DIR"' EXIT
truncate -s 1G "$DIR/disk0.img"
cat <<MSG
vdevd demo: image $DIR/disk0.img (1 GiB, sparse), socket $DIR/disk0.sock;
            vsock for guest CID 3 on $DIR/vm3.sock, host side $DIR/vm3.vsock (CONNECT <port>) and $DIR/vm3.vsock_<port>
Attach a guest with:
  qemu-system-x86_64 -accel kvm -m 1G \\
    -object memory-backend-memfd,id=mem,size=1G,share=on -machine q35,memory-backend=mem \\
    -chardev socket,id=c0,path=$DIR/disk0.sock -device vhost-user-blk-pci,chardev=c0,num-queues=2 \\
    -chardev socket,id=c1,path=$DIR/vm3.sock -device vhost-user-vsock-pci,chardev=c1 ...
MSG
.build/release/vdevd --export "vhost-user-blk,id=disk0,path=$DIR/disk0.img,socket=$DIR/disk0.sock,num-queues=2" \
    --export "vhost-user-vsock,id=vm3,guest-cid=3,socket=$DIR/vm3.sock,uds-path=$DIR/vm3.vsock" "$@" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID; rm -rf "$DIR"' INT TERM EXIT
wait $PID
