#if canImport(Glibc)
import Glibc
#endif

/// The buffers of one descriptor chain, translated to host memory: device-readable segments first, then
/// device-writable ones. Storage is preallocated per request slot; filling it allocates nothing.
public struct ChainSegments {
    public let iov: UnsafeMutablePointer<iovec>
    public let capacity: Int
    public internal(set) var count: Int = 0
    public internal(set) var readableCount: Int = 0
    public internal(set) var readableBytes: UInt64 = 0
    public internal(set) var writableBytes: UInt64 = 0

    public init(capacity: Int) {
        self.capacity = capacity
        iov = .allocate(capacity: capacity)
    }

    public func deallocate() { iov.deallocate() }

    public var writableCount: Int { count - readableCount }

    mutating func reset() {
        count = 0
        readableCount = 0
        readableBytes = 0
        writableBytes = 0
    }

    @inline(__always)
    mutating func append(_ p: UnsafeMutableRawPointer, _ len: Int, writable: Bool) -> Bool {
        guard count < capacity else { return false }
        iov[count] = iovec(iov_base: p, iov_len: len)
        count += 1
        if !writable { readableCount = count }
        return true
    }

    /// Visits [offset, offset+length) of the readable (or writable) area piece by piece: body gets the host
    /// pointer, how far into the range it is, and how many bytes. Returns how many bytes the area held.
    @inline(__always)
    private func walk(writable: Bool, offset: Int, length: Int, _ body: (UnsafeMutableRawPointer, Int, Int) -> Void) -> Int {
        var skip = offset
        var done = 0
        var i = writable ? readableCount : 0
        let end = writable ? count : readableCount
        while i < end && done < length {
            let seg = iov[i]
            if skip >= seg.iov_len {
                skip -= seg.iov_len
            } else {
                let n = min(seg.iov_len - skip, length - done)
                body(seg.iov_base! + skip, done, n)
                done += n
                skip = 0
            }
            i += 1
        }
        return done
    }

    /// Copies `length` bytes starting `offset` bytes into the readable area; false if it is too short.
    public func copyReadable(offset: Int, into dst: UnsafeMutableRawPointer, length: Int) -> Bool {
        walk(writable: false, offset: offset, length: length) { p, at, n in (dst + at).copyMemory(from: p, byteCount: n) } == length
    }

    /// Copies bytes into the writable area starting `offset` bytes in; returns how many fit.
    @discardableResult
    public func copyToWritable(offset: Int, from src: UnsafeRawPointer, length: Int) -> Int {
        walk(writable: true, offset: offset, length: length) { p, at, n in p.copyMemory(from: src + at, byteCount: n) }
    }

    /// Host pointer of the last writable byte (a virtio-blk status byte lives there).
    public var lastWritableByte: UnsafeMutablePointer<UInt8>? {
        guard count > readableCount else { return nil }
        let seg = iov[count - 1]
        return (seg.iov_base! + (seg.iov_len - 1)).assumingMemoryBound(to: UInt8.self)
    }

    /// Fills `out` with iovecs covering [offset, offset+length) of the readable (or writable) area.
    /// Returns the number of iovecs written, or nil if the area is too short or `out` too small.
    public func slice(writable: Bool, offset: Int, length: Int, into out: UnsafeMutablePointer<iovec>,
                      outCapacity: Int) -> Int? {
        let first = writable ? readableCount : 0
        return sliceIOVs(iov + first, count: (writable ? count : readableCount) - first, offset: offset,
                         length: length, into: out, capacity: outCapacity)
    }
}

/// Fills `out` with iovecs covering bytes [offset, offset+length) of the `count` iovecs at `iov`. Returns the
/// number written, or nil if they hold fewer bytes or `out` is too small.
@inline(__always)
public func sliceIOVs(_ iov: UnsafePointer<iovec>, count: Int, offset: Int, length: Int,
                      into out: UnsafeMutablePointer<iovec>, capacity: Int) -> Int? {
    var skip = offset, remaining = length, n = 0, i = 0
    while i < count && remaining > 0 {
        let seg = iov[i]
        if skip >= seg.iov_len {
            skip -= seg.iov_len
        } else {
            guard n < capacity else { return nil }
            let take = min(seg.iov_len - skip, remaining)
            out[n] = iovec(iov_base: seg.iov_base! + skip, iov_len: take)
            n += 1
            remaining -= take
            skip = 0
        }
        i += 1
    }
    return remaining == 0 ? n : nil
}
