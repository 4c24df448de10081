#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Virtio

/// A frame inside the switch: where its bytes are (the sender's guest memory or an uplink buffer), its offload
/// header, and how many receivers still have to copy it. The sender owns it and may reuse it once `refs` is 0;
/// a receiver holds it only from taking it off its backlog to releasing it, so one copy moves it guest to guest.
public struct NetFrame {
    public var iov: UnsafeMutablePointer<iovec>
    public var iovCount: Int = 0
    /// Frame bytes (Ethernet header onwards, no virtio_net_hdr).
    public var length: Int = 0
    public var header = NetHeader()
    public var dst = MACAddress(value: 0)
    public var src = MACAddress(value: 0)
    /// Picks one of the receiving port's rx queues, so one flow stays in order on one queue.
    public var flowHash: UInt32 = 0
    /// Sender's hold plus one per receiver backlog holding it; atomic.
    var refs: UInt32 = 0

    public static let maxSegments = 64
}

public typealias NetFrameRef = UnsafeMutablePointer<NetFrame>

extension UnsafeMutablePointer where Pointee == NetFrame {
    /// The atomics work on the field in place (a pointee's stored property has a fixed address).
    @inline(__always) func retainFrame() { _ = withUnsafeMutablePointer(to: &pointee.refs) { vdv_fetch_add_u32($0, 1) } }
    /// A receiver (or the sender) is done with the frame's bytes.
    @inline(__always) func releaseFrame() { _ = withUnsafeMutablePointer(to: &pointee.refs) { vdv_fetch_sub_u32($0, 1) } }
    @inline(__always) var frameInUse: Bool { withUnsafeMutablePointer(to: &pointee.refs) { vdv_load_acquire_u32($0) } != 0 }
    @inline(__always) func holdBySender() { withUnsafeMutablePointer(to: &pointee.refs) { vdv_store_release_u32($0, 1) } }
}

/// Preallocated frames, one per descriptor head of a tx queue (or per uplink buffer), each with its iovecs.
final class NetFrameTable {
    let frames: UnsafeMutablePointer<NetFrame>
    let count: Int
    private let iovStorage: UnsafeMutablePointer<iovec>

    init(count: Int) {
        self.count = count
        iovStorage = .allocate(capacity: count * NetFrame.maxSegments)
        frames = .allocate(capacity: count)
        for i in 0..<count { (frames + i).initialize(to: NetFrame(iov: iovStorage + i * NetFrame.maxSegments)) }
    }

    deinit {
        frames.deinitialize(count: count)
        frames.deallocate()
        iovStorage.deallocate()
    }
}

/// Reads frame bytes [offset, offset+length) into dst; returns how many were there.
@inline(__always)
func copyFromFrame(_ f: NetFrameRef, offset: Int, into dst: UnsafeMutableRawPointer, length: Int) -> Int {
    var skip = offset, done = 0, i = 0
    while i < f.pointee.iovCount && done < length {
        let seg = f.pointee.iov[i]
        if skip >= seg.iov_len { skip -= seg.iov_len } else {
            let n = min(seg.iov_len - skip, length - done)
            (dst + done).copyMemory(from: seg.iov_base! + skip, byteCount: n)
            done += n
            skip = 0
        }
        i += 1
    }
    return done
}

/// iovecs covering frame bytes [offset, offset+length), at most `capacity`; nil if the frame is shorter or
/// they do not fit.
@inline(__always)
func sliceFrame(_ f: NetFrameRef, offset: Int, length: Int, into out: UnsafeMutablePointer<iovec>, capacity: Int) -> Int? {
    sliceIOVs(f.pointee.iov, count: f.pointee.iovCount, offset: offset, length: length, into: out, capacity: capacity)
}

/// Stores a 16-bit value big-endian (network order) at p + offset, unaligned.
@inline(__always)
func storeBE16(_ p: UnsafeMutableRawPointer, _ offset: Int, _ v: Int) {
    p.storeBytes(of: UInt8(truncatingIfNeeded: v >> 8), toByteOffset: offset, as: UInt8.self)
    p.storeBytes(of: UInt8(truncatingIfNeeded: v), toByteOffset: offset + 1, as: UInt8.self)
}
