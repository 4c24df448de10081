#if canImport(Glibc)
import Glibc
#endif
import CVdevd

/// One io_uring, owned by one poller and shared by every blk queue on it. user_data carries
/// (poller queue slot << 32 | request tag). The poller also sleeps in this ring: a one-shot poll on its epoll
/// fd wakes it for kicks and control commands, so completions need no eventfd and cost no wake-up while the
/// poller is awake.
public final class IORing {
    public let ring: OpaquePointer
    public let entries: UInt32
    /// Completion queue size; requests in flight never exceed it, so the completion queue cannot overflow.
    public let cqEntries: Int
    private(set) var queued = 0
    /// Operations submitted or prepared whose completion has not been reaped (each yields exactly one CQE).
    private(set) var inFlight = 0
    static let reapBatch = 256
    let reapData = UnsafeMutablePointer<UInt64>.allocate(capacity: IORing.reapBatch)
    let reapRes = UnsafeMutablePointer<Int32>.allocate(capacity: IORing.reapBatch)
    /// user_data of the poll on the poller's epoll fd, and of cancel requests (whose results nobody needs).
    /// UInt64.max itself is liburing's, for the timeout of a timed wait on kernels without EXT_ARG.
    static let tagWake: UInt64 = UInt64.max - 1
    static let tagCancel: UInt64 = UInt64.max - 2
    private var wakeArmed = false
    /// Set when the epoll poll completed: the poller has events to collect from its epoll.
    var wakeFired = false

    public init(entries: UInt32 = 1024, cqEntries: UInt32 = 4096) throws {
        var err: Int32 = 0
        guard let r = vdv_uring_create(entries, cqEntries, &err) else {
            throw SystemError("io_uring_queue_init", errno: -err)
        }
        ring = r
        self.entries = entries
        self.cqEntries = Int(vdv_uring_cq_entries(r))
    }

    deinit {
        vdv_uring_destroy(ring)
        reapData.deallocate()
        reapRes.deallocate()
    }

    @inline(__always) public static func userData(slot: UInt16, tag: UInt32) -> UInt64 {
        UInt64(slot) << 32 | UInt64(tag)
    }

    /// Block I/O operations in flight (the epoll poll not counted).
    public var ioInFlight: Int { inFlight - (wakeArmed ? 1 : 0) }

    /// Room for `n` more operations: in the submission queue (submitting if needed) and in the completion
    /// queue (two places stay reserved: the epoll poll and one cancel).
    @inline(__always) public func hasRoom(_ n: Int) -> Bool {
        guard inFlight + n + 2 <= cqEntries else { return false }
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

    /// BLKDISCARD of a block device range, asynchronously (Linux 6.12 and later).
    @inline(__always)
    public func blockDiscard(fd: Int32, offset: UInt64, length: UInt64, userData: UInt64) -> Bool {
        note(vdv_uring_prep_blk_discard(ring, fd, offset, length, userData))
    }

    /// A read or write on a registered file (`fileIndex`, from registerFile). bufIndex >= 0: the single iovec lies
    /// in that registered buffer (READ_FIXED / WRITE_FIXED).
    @inline(__always)
    public func rwRegistered(write: Bool, fileIndex: Int32, iov: UnsafeRawPointer, count: Int, bufIndex: Int32,
                             offset: UInt64, flags: UInt32, userData: UInt64) -> Bool {
        note(vdv_uring_prep_rw_registered(ring, Int32(write ? VDV_OP_WRITEV : VDV_OP_READV), fileIndex, iov, UInt32(count),
                                          bufIndex, offset, flags, userData))
    }

    // MARK: registered files (poller thread only)

    private static let fileSlots: UInt32 = 256
    private var fileTableReady: Bool?
    private var files: [Int32: (index: Int32, refs: Int)] = [:]
    private var freeFileSlots: [Int32] = []

    /// Puts fd in the ring's file table (or takes another reference on it): its requests then skip the per-request
    /// file lookup and reference counting. Returns the slot, or -1 where the kernel or the table says no.
    public func registerFile(_ fd: Int32) -> Int32 {
        if let f = files[fd] {
            files[fd] = (f.index, f.refs + 1)
            return f.index
        }
        if fileTableReady == nil {
            fileTableReady = vdv_uring_files_sparse(ring, IORing.fileSlots) == 0
            freeFileSlots = (0..<Int32(IORing.fileSlots)).reversed().map { $0 }
        }
        guard fileTableReady == true, let index = freeFileSlots.popLast() else { return -1 }
        guard vdv_uring_set_file(ring, UInt32(index), fd) == 0 else {
            freeFileSlots.append(index)
            return -1
        }
        files[fd] = (index, 1)
        return index
    }

    /// One reference less on a registered fd; the last one empties its slot (requests in flight keep the file).
    public func unregisterFile(_ fd: Int32) {
        guard let f = files[fd] else { return }
        if f.refs > 1 {
            files[fd] = (f.index, f.refs - 1)
            return
        }
        files[fd] = nil
        _ = vdv_uring_set_file(ring, UInt32(f.index), -1)
        freeFileSlots.append(f.index)
    }

    /// Asks the kernel to cancel the operation with this user_data; its own completion says how it ended.
    public func cancel(userData: UInt64) -> Bool {
        guard inFlight + 1 <= cqEntries else { return false }
        if vdv_uring_sq_space_left(ring) == 0 { submit() }
        return note(vdv_uring_prep_cancel(ring, userData, IORing.tagCancel))
    }

    @inline(__always) private func note(_ rc: Int32) -> Bool {
        if rc == 0 {
            queued += 1
            inFlight += 1
        }
        return rc == 0
    }

    /// Submits whatever was prepared since the last call.
    public func submit() {
        guard queued > 0 else { return }
        let rc = vdv_uring_submit(ring)
        if rc >= 0 { queued = 0 }
    }

    /// Sleeps until a completion arrives, `epollFD` has events (kicks, commands, host sockets), or (when given)
    /// `timeoutMicros` pass.
    func wait(epollFD: Int32, timeoutMicros: UInt64? = nil) {
        if !wakeArmed, note(vdv_uring_prep_poll_in(ring, epollFD, IORing.tagWake)) { wakeArmed = true }
        let rc = timeoutMicros.map { vdv_uring_submit_and_wait_timeout(ring, 1, $0) } ?? vdv_uring_submit_and_wait(ring, 1)
        if rc >= 0 || rc == -ETIME { queued = 0 }
    }

    /// Calls body for each completion of a block operation; returns how many there were.
    @inline(__always)
    public func reap(_ body: (UInt64, Int32) -> Void) -> Int {
        var total = 0
        while true {
            let n = Int(vdv_uring_reap(ring, reapData, reapRes, UInt32(IORing.reapBatch)))
            inFlight -= n
            for i in 0..<n {
                let ud = reapData[i]
                if ud >= IORing.tagCancel {  // the wake poll, cancels, liburing's own timeouts
                    if ud == IORing.tagWake {
                        wakeArmed = false
                        wakeFired = true
                    }
                    continue
                }
                body(ud, reapRes[i])
                total += 1
            }
            if n < IORing.reapBatch { return total }
        }
    }

    /// Starts the calling thread's io-wq (io_uring makes it at the thread's first submission) and places and caps
    /// its workers. Poller thread only: the workers belong to the thread that submits.
    func placeWorkers(_ w: IOWorkers) -> Int32 {
        if note(vdv_uring_prep_nop(ring, IORing.tagCancel)) { submit() }
        return limitWorkers(cpus: w.cpus, maxBounded: w.maxBounded, maxUnbounded: 0)
    }

    /// Puts the ring's io-wq workers (punted buffered writes, devices without NOWAIT) on `cpus` and caps them.
    /// Returns 0 or -errno (an old kernel, or CPUs outside the cpuset).
    private func limitWorkers(cpus: [Int32], maxBounded: UInt32, maxUnbounded: UInt32) -> Int32 {
        cpus.withUnsafeBufferPointer {
            vdv_uring_limit_workers(ring, $0.baseAddress, UInt32($0.count), maxBounded, maxUnbounded)
        }
    }
}

/// Where a poller's io_uring workers run and how many there may be: requests io_uring cannot issue without
/// blocking (buffered writes on some file systems, devices without NOWAIT) go to them, and on the poller's own
/// core they would compete with its spinning.
public struct IOWorkers: Equatable {
    /// CPUs for the workers; empty leaves them where the kernel puts them.
    public var cpus: [Int32]
    /// At most this many workers for file and block I/O (io-wq's bounded class).
    public var maxBounded: UInt32

    public init(cpus: [Int32] = [], maxBounded: UInt32 = IOWorkers.defaultMaxBounded) {
        self.cpus = cpus
        self.maxBounded = maxBounded
    }

    public static let defaultMaxBounded: UInt32 = 8

    /// The CPUs this process may run on that no poller is pinned to (--cpus). Without pinned pollers nothing is
    /// chosen: the operator's CPU affinity for the daemon (taskset, a cpuset) is theirs, and workers stay in it.
    public static func sparing(pollerCPUs: [Int32]) -> [Int32] {
        guard !pollerCPUs.isEmpty else { return [] }
        var mine = [Int32](repeating: 0, count: 1024)
        let n = Int(vdv_cpus_of_process(&mine, 1024))
        guard n > 0 else { return [] }
        return mine.prefix(n).filter { !pollerCPUs.contains($0) }
    }
}
