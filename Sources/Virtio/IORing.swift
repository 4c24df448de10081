import CVdevd

/// One io_uring, owned by one poller and shared by every blk queue on it. Completions wake the poller
/// through a registered eventfd. user_data carries (poller queue slot << 32 | request tag).
public final class IORing {
    public let ring: OpaquePointer
    public let eventFD: EventFD
    public let entries: UInt32
    private(set) var queued = 0
    static let reapBatch = 256
    let reapData = UnsafeMutablePointer<UInt64>.allocate(capacity: IORing.reapBatch)
    let reapRes = UnsafeMutablePointer<Int32>.allocate(capacity: IORing.reapBatch)

    public init(entries: UInt32 = 1024) throws {
        var err: Int32 = 0
        guard let r = vdv_uring_create(entries, &err) else { throw SystemError("io_uring_queue_init", errno: -err) }
        ring = r
        self.entries = entries
        eventFD = try EventFD()
        _ = try checkNegErrno("io_uring_register_eventfd", vdv_uring_register_eventfd(r, eventFD.fd))
    }

    deinit {
        vdv_uring_destroy(ring)
        reapData.deallocate()
        reapRes.deallocate()
    }

    @inline(__always) public static func userData(slot: UInt16, tag: UInt32) -> UInt64 {
        UInt64(slot) << 32 | UInt64(tag)
    }

    /// Room for `n` more SQEs before a submit is needed.
    @inline(__always) public func hasRoom(_ n: Int) -> Bool {
        if Int(vdv_uring_sq_space_left(ring)) >= n { return true }
        submit()
        return Int(vdv_uring_sq_space_left(ring)) >= n
    }

    @inline(__always)
    public func readv(fd: Int32, iov: UnsafeRawPointer, count: Int, offset: UInt64, userData: UInt64) -> Bool {
        note(vdv_uring_prep_rw(ring, Int32(VDV_OP_READV), fd, iov, UInt32(count), offset, 0, userData))
    }

    @inline(__always)
    public func writev(fd: Int32, iov: UnsafeRawPointer, count: Int, offset: UInt64, flags: UInt32,
                       userData: UInt64) -> Bool {
        note(vdv_uring_prep_rw(ring, Int32(VDV_OP_WRITEV), fd, iov, UInt32(count), offset, flags, userData))
    }

    @inline(__always)
    public func fsync(fd: Int32, dataOnly: Bool, userData: UInt64) -> Bool {
        note(vdv_uring_prep_fsync(ring, fd, dataOnly ? 1 : 0, userData))
    }

    @inline(__always)
    public func fallocate(fd: Int32, mode: Int32, offset: UInt64, length: UInt64, userData: UInt64) -> Bool {
        note(vdv_uring_prep_fallocate(ring, fd, mode, offset, length, userData))
    }

    @inline(__always) private func note(_ rc: Int32) -> Bool {
        if rc == 0 { queued += 1 }
        return rc == 0
    }

    /// Submits whatever was prepared since the last call.
    public func submit() {
        guard queued > 0 else { return }
        let rc = vdv_uring_submit(ring)
        if rc >= 0 { queued = 0 }
    }

    /// Calls body for each completion; returns how many there were.
    @inline(__always)
    public func reap(_ body: (UInt64, Int32) -> Void) -> Int {
        var total = 0
        while true {
            let n = Int(vdv_uring_reap(ring, reapData, reapRes, UInt32(IORing.reapBatch)))
            for i in 0..<n { body(reapData[i], reapRes[i]) }
            total += n
            if n < IORing.reapBatch { return total }
        }
    }
}
