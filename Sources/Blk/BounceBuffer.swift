#if canImport(Glibc)
import Glibc
#endif

/// Aligned memory for O_DIRECT requests whose guest buffers break the backing's alignment rules (a buffer at
/// +8 bytes, a segment shorter than a block): the data goes through here instead of failing with EINVAL.
/// One per queue, reserved on first use (address space only until touched) and carved into 64 chunks; a request
/// takes a run of contiguous chunks and gives them back when it completes. Poller thread only.
struct BounceBuffer {
    static let chunkBytes = 256 << 10
    static let chunks = 64
    /// The largest misaligned request served; larger ones fail (Linux guests send at most a few MiB).
    static let capacity = chunkBytes * chunks

    private var base: UnsafeMutableRawPointer?
    /// Bit i set: chunk i is in use.
    private var used: UInt64 = 0

    /// A run of chunks: where it starts and how many.
    struct Run {
        let first: Int
        let count: Int
    }

    /// Takes room for `bytes`, or nil when no run that long is free now (a completion will free one) or the
    /// memory cannot be reserved.
    mutating func take(_ bytes: Int) -> (Run, UnsafeMutableRawPointer)? {
        guard bytes > 0, bytes <= BounceBuffer.capacity else { return nil }
        if base == nil {
            let p = mmap(nil, BounceBuffer.capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
            guard let p, p != MAP_FAILED else { return nil }
            base = p
        }
        let need = (bytes + BounceBuffer.chunkBytes - 1) / BounceBuffer.chunkBytes
        let mask: UInt64 = need == 64 ? ~0 : (1 << UInt64(need)) - 1
        var first = 0
        while first + need <= BounceBuffer.chunks {
            if used & (mask << UInt64(first)) == 0 {
                used |= mask << UInt64(first)
                return (Run(first: first, count: need), base! + first * BounceBuffer.chunkBytes)
            }
            first += 1
        }
        return nil
    }

    mutating func give(_ run: Run) {
        let mask: UInt64 = run.count == 64 ? ~0 : (1 << UInt64(run.count)) - 1
        used &= ~(mask << UInt64(run.first))
    }

    var inUse: Bool { used != 0 }

    func release() {
        if let base { munmap(base, BounceBuffer.capacity) }
    }
}
