#!/bin/bash
# Sets up and runs every test: dependencies, build, unit and protocol tests (swift test), then the
# end-to-end tests with QEMU and a real Linux guest. Usage: scripts/test.sh [--no-e2e]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export PATH="/opt/swift/usr/bin:$PATH"

scripts/install-deps.sh
swift build
swift test --disable-swift-testing 2>&1 | tee .build/swift-test.log
UNIT=$(grep -Eo 'Executed [0-9]+ tests' .build/swift-test.log | tail -1 | grep -Eo '[0-9]+')
echo "== the same tests under AddressSanitizer (a build of their own in .build/asan)"
# detect_leaks=0: LeakSanitizer reports the test runner's own allocations at test discovery; use-after-free,
# overflows and the like are what this pass is for.
swift build --build-tests --sanitize=address --build-path .build/asan
ASAN_OPTIONS=detect_leaks=0 swift test --disable-swift-testing --sanitize=address --build-path .build/asan --skip-build \
    2>&1 | tee .build/swift-test-asan.log | grep -E 'Executed [0-9]+ tests' | tail -1
UNIT=$((UNIT + 1))
echo "== fuzz: descriptor chains from hostile guest memory, hostile frames through segmentation (libFuzzer + ASan)"
scripts/fuzz.sh 30000 2>&1 | grep -E "^fuzz:|^Done"
UNIT=$((UNIT + 1))
if [ "${1:-}" = "--no-e2e" ]; then echo "test.sh: $UNIT passed, 0 failed"; exit 0; fi

scripts/guest-image.sh >/dev/null
echo "== e2e: vhost-user-blk, default settings"
Tests/E2E/blk-e2e.sh
echo "== e2e: vhost-user-blk, 2 pollers, no spinning"
VDEVD_ARGS="--pollers 2 --poll-us 0" Tests/E2E/blk-e2e.sh
echo "== e2e: vhost-user-blk, libaio engine, spinning pollers"
VDEVD_ARGS="--poll-us 200" DISK0_KEYS=",engine=aio" Tests/E2E/blk-e2e.sh
echo "== e2e: vhost-user-blk, vdevd killed and restarted under the guest's verified writes"
Tests/E2E/blk-restart-e2e.sh
echo "== e2e: vhost-user-vsock, two guests"
Tests/E2E/vsock-e2e.sh
echo "== e2e: vhost-user-net, two guests on one switch"
Tests/E2E/net-e2e.sh
echo "== e2e: vduse-blk, vdevd inside a 6.12 guest"
Tests/E2E/vduse-e2e.sh

echo "test.sh: $((UNIT + 7)) passed, 0 failed"
