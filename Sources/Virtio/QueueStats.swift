import CVdevd

/// Per-queue counters: written by the owning poller only, read by anyone (relaxed atomics).
public final class QueueStats {
    public enum Counter: Int, CaseIterable {
        case requests, readBytes, writtenBytes, flushes, discards, errors, unsupported, notifications, kicks
        /// Reads and writes the engine finished short and the rest was submitted again.
        case shortTransfers
        /// O_DIRECT requests whose guest buffers went through an aligned bounce buffer.
        case bounced
        /// Requests still at the device when their queue had to stop, failed with IOERR after a cancel.
        case timedOut
        /// A device's flow found making no progress while work was pending (vsock's stall detector).
        case stalls
        /// Reads and writes issued on io_uring registered buffers (READ_FIXED / WRITE_FIXED).
        case fixedBuffers
    }
    private let storage = UnsafeMutablePointer<UInt64>.allocate(capacity: Counter.allCases.count)
    public init() { storage.initialize(repeating: 0, count: Counter.allCases.count) }
    deinit { storage.deallocate() }

    @inline(__always) public func add(_ c: Counter, _ n: UInt64 = 1) {
        let p = storage + c.rawValue
        vdv_store_relaxed_u64(p, vdv_load_relaxed_u64(p) &+ n)
    }
    /// Takes back one count (a request put back on its ring before it started).
    @inline(__always) public func remove(_ c: Counter) {
        let p = storage + c.rawValue
        vdv_store_relaxed_u64(p, vdv_load_relaxed_u64(p) &- 1)
    }
    public func get(_ c: Counter) -> UInt64 { vdv_load_relaxed_u64(storage + c.rawValue) }
    public var snapshot: [String: UInt64] {
        var d: [String: UInt64] = [:]
        for c in Counter.allCases { d["\(c)"] = get(c) }
        return d
    }
}
