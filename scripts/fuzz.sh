#!/bin/bash
# Builds libFuzzer targets (with AddressSanitizer) and runs them.
#   scripts/fuzz.sh [TARGET] [RUNS]   TARGET: chain (virtqueue core: descriptor chains from hostile guest memory),
#                                     net (TCP segmentation, UDP fragmentation, checksums of hostile frames),
#                                     or all (default); RUNS inputs each, default 200000.
#   scripts/fuzz.sh 30000             all targets, 30000 inputs each
# A crash or a sanitizer report fails (exit != 0); the input that did it is left in .build-fuzz/.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export PATH="/opt/swift/usr/bin:$PATH"
TARGET=all
if [ $# -gt 0 ] && ! [[ $1 =~ ^[0-9]+$ ]]; then TARGET=$1; shift; fi
RUNS=${1:-200000}
case "$TARGET" in chain|net|all) ;; *) echo "fuzz.sh: unknown target $TARGET (chain, net, all)" >&2; exit 2 ;; esac
OUT=.build-fuzz
mkdir -p "$OUT/include"
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
SWIFTFLAGS=(-sanitize=fuzzer,address -parse-as-library -g -Onone -I "$OUT/include")
# fuzz NAME SOURCES...: one module of the given sources and the target, run over its own corpus.
fuzz() {
    local name=$1; shift
    mkdir -p "$OUT/corpus-$name"
    swiftc "${SWIFTFLAGS[@]}" -module-name "Fuzz_$name" "$@" "${OBJS[@]}" -luring -laio -o "$OUT/$name-fuzz"
    echo "fuzz: $name, $RUNS inputs"
    # The work corpus first (new inputs go there), then the seeds kept in the repository, if any.
    local seeds=(); [ -d "Fuzz/corpus-$name" ] && seeds=("Fuzz/corpus-$name")
    "$OUT/$name-fuzz" -runs="$RUNS" -max_len=4096 -seed=1 -artifact_prefix="$OUT/$name-" "$OUT/corpus-$name" \
        "${seeds[@]}" 2>&1 | tail -2
}
if [ "$TARGET" = chain ] || [ "$TARGET" = all ]; then fuzz chain Sources/Virtio/*.swift Fuzz/ChainFuzz.swift; fi
if [ "$TARGET" = net ] || [ "$TARGET" = all ]; then
    # Net imports Virtio: that one is a module of its own here.
    mkdir -p "$OUT/modules"
    swiftc "${SWIFTFLAGS[@]}" -module-name Virtio -wmo -emit-module -emit-module-path "$OUT/modules/Virtio.swiftmodule" \
        -c Sources/Virtio/*.swift -o "$OUT/virtio.o"
    fuzz net -I "$OUT/modules" Sources/Net/*.swift Fuzz/NetFuzz.swift "$OUT/virtio.o"
fi
