#if canImport(Glibc)
import Glibc
#endif

/// The Internet checksum (RFC 1071) over frame bytes, for a receiver that did not negotiate GUEST_CSUM
/// (virtio 1.3, 5.1.6.2: the device completes a partial checksum from csum_start to the end).
struct InternetChecksum {
    private var sum: UInt64 = 0
    /// Whether the next byte is the low half of a 16-bit word (an odd number of bytes so far).
    private var odd = false

    @inline(__always)
    mutating func add(_ p: UnsafeRawPointer, _ count: Int) {
        var i = 0
        if odd && count > 0 {
            sum &+= UInt64(p.load(as: UInt8.self))
            i = 1
            odd = false
        }
        while i + 1 < count {
            sum &+= UInt64(p.load(fromByteOffset: i, as: UInt8.self)) << 8 | UInt64(p.load(fromByteOffset: i + 1, as: UInt8.self))
            i += 2
        }
        if i < count {
            sum &+= UInt64(p.load(fromByteOffset: i, as: UInt8.self)) << 8
            odd = true
        }
    }

    /// Sums `count` frame bytes from `offset` (to the end of the frame by default).
    mutating func add(frame f: NetFrameRef, from offset: Int, count: Int = Int.max) {
        var skip = offset, left = count
        for i in 0..<f.pointee.iovCount where left > 0 {
            let seg = f.pointee.iov[i]
            if skip >= seg.iov_len { skip -= seg.iov_len; continue }
            let n = min(seg.iov_len - skip, left)
            add(UnsafeRawPointer(seg.iov_base! + skip), n)
            left -= n
            skip = 0
        }
    }

    /// The one's-complement of the folded sum, as stored in the packet (big-endian).
    var result: UInt16 {
        var s = sum
        while s >> 16 != 0 { s = (s & 0xffff) + (s >> 16) }
        return ~UInt16(s)
    }
}
