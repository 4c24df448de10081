import CVdevd

/// Where guest memory lies in one poller's io_uring buffer table: a request whose data is one piece inside one
/// registered chunk is issued as READ_FIXED / WRITE_FIXED, and the kernel skips pinning its pages per request.
/// Immutable; a queue is handed a new one when its memory table changes.
public final class FixedBufferMap {
    struct Chunk {
        let start: UInt
        let length: UInt
        let index: Int32
    }
    let chunks: ContiguousArray<Chunk>
    /// The registered regions this map holds a reference on (released together).
    let regions: [ObjectIdentifier]

    init(chunks: ContiguousArray<Chunk>, regions: [ObjectIdentifier]) {
        self.chunks = chunks
        self.regions = regions
    }

    /// The buffer index holding [p, p+length), or -1.
    @inline(__always)
    public func index(of p: UnsafeMutableRawPointer, length: Int) -> Int32 {
        let a = UInt(bitPattern: p)
        for c in chunks where a >= c.start && a - c.start <= c.length && UInt(length) <= c.length - (a - c.start) {
            return c.index
        }
        return -1
    }

    public var chunkCount: Int { chunks.count }
}

/// A poller's registered guest memory (io_uring fixed buffers), managed from control threads.
///
/// Registering a buffer pins every page of it, which takes as long as the memory is large and, in the ring being
/// registered, holds the lock the poller needs to submit. So pages are pinned in a private staging ring that
/// nobody submits to, and the poller's ring gets a copy of the staging ring's table (IORING_REGISTER_CLONE_BUFFERS:
/// references only, a short hold of its lock). Requests already using a buffer keep its pages until they
/// complete, whatever happens to the table meanwhile.
///
/// Only memory that already has pages behind it is registered (hugetlbfs, preallocated memfds): pinning a sparse
/// memory fd would allocate all of it, so a frontend could make the daemon take memory it never used.
public final class FixedBufferTable {
    /// Buffer slots per poller; the kernel caps one buffer at 1 GiB, so larger regions take several.
    static let slotCount = 1024
    static let chunkBytes: UInt64 = 1 << 30

    private struct Entry {
        let region: MemoryRegion
        let indexes: [Int32]
        var refs: Int
    }

    private unowned let target: IORing
    private let lock = Lock()
    private var staging: OpaquePointer?
    private var free: [Int32] = []
    private var entries: [ObjectIdentifier: Entry] = [:]
    /// Set when the kernel refused the mechanism itself (no clone support): nothing is registered again.
    private var disabledReason: String?
    /// The map each fixed-buffer queue of this poller holds, by slot id.
    private var bySlot: [UInt16: FixedBufferMap?] = [:]
    /// Why the last acquire registered less than it was given (nil: nothing failed), for the operator's log.
    public var lastFailure: String? { lock.withLock { failure } }
    private var failure: String?

    init(target: IORing) { self.target = target }

    deinit {
        if let staging { vdv_uring_destroy(staging) }
    }

    /// Buffers registered now (all regions, all chunks).
    public var registeredChunks: Int { lock.withLock { entries.values.reduce(0) { $0 + $1.indexes.count } } }

    /// Registers the allocated regions of `memory` that are not registered yet and returns where they lie, or nil
    /// if none could be.
    func acquire(_ memory: GuestMemory) -> FixedBufferMap? {
        lock.withLock {
            failure = nil
            guard disabledReason == nil, prepareStaging() else {
                failure = disabledReason
                return nil
            }
            var changed = false
            var chunks = ContiguousArray<FixedBufferMap.Chunk>()
            var held: [ObjectIdentifier] = []
            for r in memory.regions {
                let id = ObjectIdentifier(r)
                if entries[id] == nil {
                    guard r.allocated else { continue }
                    guard let indexes = register(r) else { continue }
                    entries[id] = Entry(region: r, indexes: indexes, refs: 0)
                    changed = true
                }
                entries[id]!.refs += 1
                held.append(id)
                for (n, index) in entries[id]!.indexes.enumerated() {
                    let off = UInt64(n) * FixedBufferTable.chunkBytes
                    chunks.append(.init(start: UInt(bitPattern: r.host) + UInt(off),
                                        length: UInt(min(FixedBufferTable.chunkBytes, r.size - off)), index: index))
                }
            }
            if changed && !publish() {
                for id in held { drop(id) }
                return nil
            }
            return held.isEmpty ? nil : FixedBufferMap(chunks: chunks, regions: held)
        }
    }

    /// Lets go of what a map held; regions nobody holds leave the poller's table.
    func release(_ map: FixedBufferMap?) {
        guard let map else { return }
        lock.withLock {
            var changed = false
            for id in map.regions where drop(id) { changed = true }
            if changed { _ = publish() }
        }
    }

    /// Control-side bookkeeping of which map a queue slot holds.
    func remember(slot: UInt16, _ map: FixedBufferMap?) { lock.withLock { bySlot[slot] = map } }
    public func map(ofSlot slot: UInt16) -> FixedBufferMap?? { lock.withLock { bySlot[slot] } }
    func forget(slot: UInt16) -> FixedBufferMap? { lock.withLock { bySlot.removeValue(forKey: slot) ?? nil } }

    // MARK: under the lock

    private func prepareStaging() -> Bool {
        if staging != nil { return true }
        var err: Int32 = 0
        guard let s = vdv_uring_create(1, 2, &err) else {
            disabledReason = "io_uring for pinning: \(SystemError.describe(-err))"
            return false
        }
        let rc = vdv_uring_buffers_sparse(s, UInt32(FixedBufferTable.slotCount))
        guard rc == 0 else {
            vdv_uring_destroy(s)
            disabledReason = "sparse buffer table: \(SystemError.describe(-rc))"
            return false
        }
        staging = s
        free = (0..<Int32(FixedBufferTable.slotCount)).reversed().map { $0 }
        return true
    }

    /// Pins a region in the staging ring, in chunks; nil (and nothing kept) if any chunk fails.
    private func register(_ r: MemoryRegion) -> [Int32]? {
        let n = Int((r.size + FixedBufferTable.chunkBytes - 1) / FixedBufferTable.chunkBytes)
        guard n <= free.count else {
            failure = "buffer table full (\(FixedBufferTable.slotCount) slots)"
            return nil
        }
        var indexes: [Int32] = []
        for i in 0..<n {
            let off = UInt64(i) * FixedBufferTable.chunkBytes
            let index = free.removeLast()
            let rc = vdv_uring_set_buffer(staging, UInt32(index), r.host + Int(off), min(FixedBufferTable.chunkBytes, r.size - off))
            if rc != 0 {
                free.append(index)
                for j in indexes { clear(j) }
                // ENOMEM: over RLIMIT_MEMLOCK without CAP_IPC_LOCK; EFAULT: pages the fd does not have.
                failure = "registering \(r.size) bytes at gpa 0x\(String(r.guestAddress, radix: 16)): \(SystemError.describe(-rc))"
                return nil
            }
            indexes.append(index)
        }
        return indexes
    }

    private func clear(_ index: Int32) {
        _ = vdv_uring_set_buffer(staging, UInt32(index), nil, 0)
        free.append(index)
    }

    /// One reference less; true if the region left the table.
    @discardableResult
    private func drop(_ id: ObjectIdentifier) -> Bool {
        guard var e = entries[id] else { return false }
        e.refs -= 1
        if e.refs > 0 {
            entries[id] = e
            return false
        }
        entries[id] = nil
        for i in e.indexes { clear(i) }
        return true
    }

    /// The poller's ring takes the staging ring's table.
    private func publish() -> Bool {
        let rc = vdv_uring_clone_buffers(target.ring, staging)
        guard rc == 0 else {
            disabledReason = "IORING_REGISTER_CLONE_BUFFERS: \(SystemError.describe(-rc)) (Linux 6.13 or later)"
            failure = disabledReason
            return false
        }
        return true
    }
}
