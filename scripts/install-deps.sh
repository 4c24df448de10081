#!/bin/bash
# Installs what a fresh Debian 12 machine lacks to build vdevd and run its tests (needs root).
# Swift itself is expected at /opt/swift (as on the project's machines).
set -euo pipefail
PKGS="liburing-dev libaio-dev qemu-system-x86 qemu-utils busybox-static cpio fio socat kmod iproute2 procps e2fsprogs util-linux mount"
missing=()
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
export DEBIAN_FRONTEND=noninteractive
# apt-get download (the guest kernel) needs package lists even when nothing is missing.
if [ ${#missing[@]} -gt 0 ] || ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then
    apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: apt-get install ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
command -v swift >/dev/null || [ -x /opt/swift/usr/bin/swift ] || { echo "install-deps: Swift not found (expected /opt/swift)" >&2; exit 1; }
