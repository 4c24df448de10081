#if canImport(Glibc)
import Glibc
#endif
import CVdevd

/// A Linux AIO context (libaio), created on first use by a poller whose queues ask for `engine=aio`.
/// fallocate has no AIO form: it runs inline and its completion is reported through reap like the rest.
public final class AIOContext {
    public let ctx: OpaquePointer
    public let eventFD: EventFD
    let reapData = UnsafeMutablePointer<UInt64>.allocate(capacity: 256)
    let reapRes = UnsafeMutablePointer<Int32>.allocate(capacity: 256)
    private var queued = 0
    /// Operations queued or submitted whose completion has not been reaped.
    public private(set) var inFlight = 0
    private var inline: [(UInt64, Int32)] = []

    public init(depth: UInt32 = 1024) throws {
        eventFD = try EventFD()
        var err: Int32 = 0
        guard let c = vdv_aio_create(depth, eventFD.fd, &err) else { throw SystemError("io_setup", errno: -err) }
        ctx = c
        inline.reserveCapacity(Int(depth))
    }

    deinit {
        vdv_aio_destroy(ctx)
        reapData.deallocate()
        reapRes.deallocate()
    }

    @inline(__always) public func hasRoom(_ n: Int) -> Bool {
        if Int(vdv_aio_free_slots(ctx)) >= n { return true }
        submit()
        return Int(vdv_aio_free_slots(ctx)) >= n
    }

    @inline(__always)
    public func readv(fd: Int32, iov: UnsafeRawPointer, count: Int, offset: UInt64, userData: UInt64) -> Bool {
        note(vdv_aio_prep_rw(ctx, Int32(VDV_OP_READV), fd, iov, UInt32(count), offset, 0, userData))
    }

    @inline(__always)
    public func writev(fd: Int32, iov: UnsafeRawPointer, count: Int, offset: UInt64, flags: UInt32, userData: UInt64) -> Bool {
        note(vdv_aio_prep_rw(ctx, Int32(VDV_OP_WRITEV), fd, iov, UInt32(count), offset, flags, userData))
    }

    @inline(__always)
    public func fsync(fd: Int32, userData: UInt64) -> Bool {
        note(vdv_aio_prep_fdsync(ctx, fd, userData))
    }

    public func fallocate(fd: Int32, mode: Int32, offset: UInt64, length: UInt64, userData: UInt64) -> Bool {
        completeInline(userData, vdv_fallocate(fd, mode, offset, length))
    }

    /// BLKDISCARD has no AIO form either.
    public func blockDiscard(fd: Int32, offset: UInt64, length: UInt64, userData: UInt64) -> Bool {
        completeInline(userData, vdv_blk_discard(fd, offset, length))
    }

    private func completeInline(_ userData: UInt64, _ result: Int32) -> Bool {
        inline.append((userData, result))
        inFlight += 1
        eventFD.signal()
        return true
    }

    @inline(__always) private func note(_ rc: Int32) -> Bool {
        if rc == 0 {
            queued += 1
            inFlight += 1
        }
        return rc == 0
    }

    public func submit() {
        guard queued > 0 else { return }
        _ = vdv_aio_submit(ctx)
        queued = Int(vdv_aio_pending(ctx))
    }

    @inline(__always)
    public func reap(_ body: (UInt64, Int32) -> Void) -> Int {
        var total = 0
        while let (ud, res) = inline.popLast() {
            inFlight -= 1
            body(ud, res)
            total += 1
        }
        while true {
            let n = Int(vdv_aio_reap(ctx, reapData, reapRes, 256))
            inFlight -= n
            for i in 0..<n { body(reapData[i], reapRes[i]) }
            total += n
            if n < 256 { return total }
        }
    }
}
