#!/bin/bash
# Builds the libFuzzer target for the virtqueue core (with AddressSanitizer) and runs it.
#   scripts/fuzz.sh [RUNS]    default 200000 inputs; a crash or a sanitizer report fails (exit != 0)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export PATH="/opt/swift/usr/bin:$PATH"
OUT=.build-fuzz
mkdir -p "$OUT/include" "$OUT/corpus"
cat > "$OUT/include/module.modulemap" <<MAP
module CVdevd {
    header "$REPO/Sources/CVdevd/include/cvdevd.h"
    export *
}
MAP
OBJS=()
for c in Sources/CVdevd/*.c; do
    o="$OUT/$(basename "$c" .c).o"
    clang -c -O1 -g -fsanitize=address,fuzzer-no-link -I Sources/CVdevd/include "$c" -o "$o"
    OBJS+=("$o")
done
swiftc -sanitize=fuzzer,address -parse-as-library -g -Onone -module-name ChainFuzz -I "$OUT/include" \
    Sources/Virtio/*.swift Fuzz/ChainFuzz.swift "${OBJS[@]}" -luring -laio -o "$OUT/chain-fuzz"
"$OUT/chain-fuzz" -runs="${1:-200000}" -max_len=4096 -seed=1 -artifact_prefix="$OUT/" "$OUT/corpus"
