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

    /// Reserves the address space on first use; false if the system refuses it (then no request can bounce).
    mutating func reserve() -> Bool {
        if base != nil { return true }
        let p = mmap(nil, BounceBuffer.capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let p, p != MAP_FAILED else { return false }
        base = p
        return true
    }

    /// Takes room for `bytes` (at most `capacity`, after reserve()), or nil when no run that long is free now:
    /// a completion will free one.
    mutating func take(_ bytes: Int) -> (Run, UnsafeMutableRawPointer)? {
        guard let base, bytes > 0, bytes <= BounceBuffer.capacity else { return nil }
        let need = (bytes + BounceBuffer.chunkBytes - 1) / BounceBuffer.chunkBytes
        let mask = BounceBuffer.mask(need)
        var first = 0
        while first + need <= BounceBuffer.chunks {
            if used & (mask << UInt64(first)) == 0 {
                used |= mask << UInt64(first)
                return (Run(first: first, count: need), base + first * BounceBuffer.chunkBytes)
            }
            first += 1
        }
        return nil
    }

    mutating func give(_ run: Run) {
        used &= ~(BounceBuffer.mask(run.count) << UInt64(run.first))
    }

    /// `count` low bits set (count is 1...64).
    private static func mask(_ count: Int) -> UInt64 { count == 64 ? ~0 : (1 << UInt64(count)) - 1 }

    func release() {
        if let base { munmap(base, BounceBuffer.capacity) }
    }
}
