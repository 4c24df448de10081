#!/bin/bash
# Builds (and caches) a guest kernel + busybox initramfs for end-to-end tests.
#
#   scripts/guest-image.sh                 build if needed, print KERNEL=... INITRD=...
#   scripts/guest-image.sh --install-deps  apt-get install the host packages the e2e tests need
#   scripts/guest-image.sh --rebuild       drop the cached initramfs and build again
#   source scripts/guest-image.sh          build if needed, export GUEST_KERNEL, GUEST_INITRD,
#                                          GUEST_KVER (and define guest_image_install_deps)
#
# Cache: $REPO/.cache/guest (override with GUEST_CACHE). Kernel package: the Debian 6.1 amd64
# image that linux-image-amd64 depends on (override with GUEST_KERNEL_PKG=linux-image-...).
# GUEST_EXTRA_MODULES="a b": more modules loaded at boot, in that order after the usual ones (the VDUSE test
# uses the 6.12 kernel with vhost_iotlb vdpa vduse virtio_vdpa); modules built into the kernel are skipped.
#
# The initramfs /init loads the virtio, 9p and vsock modules, mounts the host root read-only over
# 9p at /host (mount tag "hostroot"), then runs `sh /host$SCRIPT` where SCRIPT comes from the
# kernel command line parameter vdevd.test=/abs/host/path/script.sh, and powers off.
# Console markers: "VDEVD-GUEST: ..." lines; the test script itself prints "GUEST-RESULT: PASS"
# or "GUEST-RESULT: FAIL <reason>".

_gi_sourced=0
(return 0 2>/dev/null) && _gi_sourced=1

GUEST_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GUEST_CACHE="${GUEST_CACHE:-$GUEST_REPO/.cache/guest}"

# Modules wanted in the guest (their dependencies are added from modules.dep).
GUEST_MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk
netfs 9pnet 9pnet_virtio 9p
vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport
failover net_failover virtio_net
${GUEST_EXTRA_MODULES:-}"

GUEST_DEB_PACKAGES="qemu-system-x86 qemu-utils busybox-static cpio fio socat kmod coreutils util-linux gzip"

guest_image_install_deps() {
    export DEBIAN_FRONTEND=noninteractive
    local missing=() p
    for p in $GUEST_DEB_PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        echo "guest-image: host packages already installed" >&2
        return 0
    fi
    echo "guest-image: apt-get install ${missing[*]}" >&2
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

_gi_log() { echo "guest-image: $*" >&2; }

_gi_kernel_pkg() {
    if [ -n "${GUEST_KERNEL_PKG:-}" ]; then echo "$GUEST_KERNEL_PKG"; return; fi
    local p
    p=$(apt-cache depends linux-image-amd64 2>/dev/null |
        awk '/Depends: linux-image-6\.1\.[0-9]+-[0-9]+-amd64$/ {print $2; exit}')
    if [ -z "$p" ]; then
        # Not Debian 12's meta package: take the newest 6.1 amd64 image apt knows about.
        p=$(apt-cache search --names-only '^linux-image-6\.1\.[0-9]+-[0-9]+-amd64$' 2>/dev/null |
            awk '{print $1}' | sort -V | tail -n1)
    fi
    [ -n "$p" ] || { _gi_log "cannot find a Debian 6.1 amd64 kernel package (apt-get update?)"; return 1; }
    echo "$p"
}

# Fingerprint of everything that shapes the initramfs (this file + busybox binary).
_gi_fingerprint() {
    { cat "$GUEST_REPO/scripts/guest-image.sh"; sha256sum /bin/busybox; echo "$1"; echo "${GUEST_EXTRA_MODULES:-}"; } |
        sha256sum | cut -c1-16
}

_gi_write_init() {
    cat > "$1" <<'INIT'
#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /tmp /host /run /sys/kernel/debug
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
echo "VDEVD-GUEST: init started (kernel $(uname -r), $(nproc) cpus)"
while read -r m; do
    [ -n "$m" ] || continue
    insmod "/lib/modules/$m" 2>/tmp/insmod.err || echo "VDEVD-GUEST: insmod $m failed: $(cat /tmp/insmod.err)"
done < /etc/modules.order
ifconfig lo 127.0.0.1 up 2>/dev/null
TEST=
for a in $(cat /proc/cmdline); do
    case "$a" in
        vdevd.test=*) TEST="${a#vdevd.test=}" ;;
    esac
done
rc=0
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot /host; then
    echo "VDEVD-GUEST: cannot mount host root over 9p"
    echo "GUEST-RESULT: FAIL 9p-mount"
    rc=1
elif [ -z "$TEST" ]; then
    echo "VDEVD-GUEST: no vdevd.test= on the kernel command line"
    echo "GUEST-RESULT: FAIL no-test-script"
    rc=1
elif [ ! -f "/host$TEST" ]; then
    echo "VDEVD-GUEST: /host$TEST not found (under the host's /tmp? the guest cannot see it)"
    echo "GUEST-RESULT: FAIL test-script-not-found"
    rc=1
else
    echo "VDEVD-GUEST: running /host$TEST"
    # In a child whose cwd is the script's folder: init itself keeps nothing open on /host, so a script that
    # copies what it needs and unmounts /host (a live-migration test: QEMU refuses to migrate with 9p mounted)
    # can do so.
    (cd "$(dirname "/host$TEST")" && exec sh "/host$TEST")
    rc=$?
fi
echo "VDEVD-GUEST: test script exited rc=$rc"
sync
echo "VDEVD-GUEST: powering off"
poweroff -f
sleep 5
INIT
    chmod 755 "$1"
}

guest_image_build() {
    local pkg kver kdir debdir fp initrd stage
    pkg=$(_gi_kernel_pkg) || return 1
    kver=${pkg#linux-image-}
    kver=${kver%-unsigned}
    mkdir -p "$GUEST_CACHE"
    # The cache lives in the repo: make sure git never picks it up.
    [ -f "$GUEST_REPO/.cache/.gitignore" ] || { mkdir -p "$GUEST_REPO/.cache" && echo '*' > "$GUEST_REPO/.cache/.gitignore"; }
    debdir="$GUEST_CACHE/debs"
    kdir="$GUEST_CACHE/kernel-$kver"
    if [ ! -f "$kdir/.done" ]; then
        command -v dpkg >/dev/null || { _gi_log "dpkg missing"; return 1; }
        mkdir -p "$debdir"
        if ! ls "$debdir/${pkg}_"*.deb >/dev/null 2>&1; then
            _gi_log "downloading $pkg"
            (cd "$debdir" && apt-get download -q "$pkg" 2>&1 | grep -v 'sandbox' >&2) || true
            ls "$debdir/${pkg}_"*.deb >/dev/null 2>&1 || { _gi_log "apt-get download $pkg failed"; return 1; }
        fi
        rm -rf "$kdir"
        _gi_log "unpacking $pkg"
        dpkg -x "$(ls "$debdir/${pkg}_"*.deb | sort -V | tail -n1)" "$kdir" || return 1
        [ -f "$kdir/boot/vmlinuz-$kver" ] || { _gi_log "no vmlinuz-$kver in $pkg"; return 1; }
        # Guest modules may be compressed on newer kernels; busybox insmod wants plain .ko.
        find "$kdir/lib/modules/$kver" \( -name '*.ko.xz' -o -name '*.ko.zst' \) -print0 2>/dev/null |
            while IFS= read -r -d '' f; do
                case "$f" in *.xz) xz -dq "$f" ;; *.zst) zstd -dq --rm "$f" ;; esac
            done
        depmod -b "$kdir" "$kver" || return 1
        touch "$kdir/.done"
    fi

    fp=$(_gi_fingerprint "$kver")
    initrd="$GUEST_CACHE/initrd-$kver-$fp.img"
    if [ ! -f "$initrd" ]; then
        _gi_log "building initramfs for $kver"
        stage=$(mktemp -d "$GUEST_CACHE/stage.XXXXXX")
        mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,host,lib/modules}
        cp /bin/busybox "$stage/bin/busybox"
        local applet
        for applet in $(/bin/busybox --list); do
            [ "$applet" = busybox ] || ln -sf busybox "$stage/bin/$applet"
        done
        # Dependency-ordered module list: modprobe --show-depends prints insmod lines, deps first.
        local m line ko rel missing=0
        : > "$stage/etc/modules.order"
        for m in $GUEST_MODULES; do
            if ! out=$(modprobe -d "$kdir" -S "$kver" --show-depends "$m" 2>&1); then
                _gi_log "module $m: $out"; missing=1; continue
            fi
            while read -r line; do
                case "$line" in
                    builtin*) continue ;;
                    insmod*) ko=$(echo "$line" | awk '{print $2}') ;;
                    *) continue ;;
                esac
                rel=${ko#"$kdir/lib/modules/$kver/"}
                grep -qxF "$rel" "$stage/etc/modules.order" && continue
                mkdir -p "$stage/lib/modules/$(dirname "$rel")"
                cp "$ko" "$stage/lib/modules/$rel"
                echo "$rel" >> "$stage/etc/modules.order"
            done <<< "$out"
        done
        [ $missing -eq 0 ] || { rm -rf "$stage"; return 1; }
        _gi_write_init "$stage/init"
        (cd "$stage" && find . | cpio -o -H newc --quiet | gzip -1) > "$initrd.tmp" || { rm -rf "$stage"; return 1; }
        mv "$initrd.tmp" "$initrd"
        rm -rf "$stage"
        # Drop stale initramfs images of this kernel.
        find "$GUEST_CACHE" -maxdepth 1 -name "initrd-$kver-*.img" ! -name "$(basename "$initrd")" -delete
    fi
    GUEST_KVER="$kver"
    GUEST_KERNEL="$kdir/boot/vmlinuz-$kver"
    GUEST_INITRD="$initrd"
    export GUEST_KVER GUEST_KERNEL GUEST_INITRD
}

if [ $_gi_sourced -eq 1 ]; then
    guest_image_build
else
    set -o pipefail
    case "${1:-}" in
        --install-deps) guest_image_install_deps; exit $? ;;
        --rebuild) rm -f "$GUEST_CACHE"/initrd-*.img ;;
        "") ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "usage: $0 [--install-deps|--rebuild]" >&2; exit 2 ;;
    esac
    guest_image_build || exit 1
    echo "KERNEL=$GUEST_KERNEL"
    echo "INITRD=$GUEST_INITRD"
fi
