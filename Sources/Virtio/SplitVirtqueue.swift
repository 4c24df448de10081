import CVdevd

/// The device side of a split virtqueue (virtio 1.3, 2.7). Owned by one poller thread; not thread-safe.
public final class SplitVirtqueue {
    public static let maxSize: UInt32 = 32768
    static let descriptorSize = 16
    static let flagNext: UInt16 = 1       // VIRTQ_DESC_F_NEXT
    static let flagWrite: UInt16 = 2      // VIRTQ_DESC_F_WRITE
    static let flagIndirect: UInt16 = 4   // VIRTQ_DESC_F_INDIRECT
    static let usedFlagNoNotify: UInt16 = 1    // VIRTQ_USED_F_NO_NOTIFY
    static let availFlagNoInterrupt: UInt16 = 1 // VIRTQ_AVAIL_F_NO_INTERRUPT

    public let index: Int
    public let size: UInt16
    public let eventIdx: Bool
    public let indirect: Bool
    public let addresses: VringAddresses
    public private(set) var memory: GuestMemory

    private var desc: UnsafeMutableRawPointer
    private var avail: UnsafeMutableRawPointer
    private var used: UnsafeMutableRawPointer

    /// Next avail ring slot to consume (the "last_avail_idx" that GET_VRING_BASE returns).
    public private(set) var lastAvailIdx: UInt16
    /// avail->idx as last read: entries up to it are taken without reading it again. Its cache line is the one the
    /// driver writes on every kick-worthy batch, so reading it once per burst instead of once per entry saves a
    /// cross-CPU miss per request (measured on net: a quarter of a 64-byte frame's time).
    private var knownAvailIdx: UInt16
    /// Our copy of used->idx.
    public private(set) var usedIdx: UInt16
    private var signalledUsed: UInt16 = 0
    private var signalledUsedValid = false
    /// Whether we asked the driver to kick us (notifications enabled).
    public private(set) var notificationsEnabled = true
    /// In-flight tracking (vhost-user INFLIGHT_SHMFD), when the frontend gave a region for this ring.
    private var inflight: SplitInflight?
    /// Heads that were in flight when a previous backend died, handed out again before the avail ring.
    private var resubmit: [UInt16] = []
    private var resubmitNext = 0
    private var lastPop: (head: UInt16, resubmitted: Bool) = (0, false)
    private var publishedIdx: UInt16 = 0

    public init(index: Int, size: UInt32, addresses: VringAddresses, memory: GuestMemory, features: UInt64,
                lastAvailIdx: UInt16) throws {
        guard size > 0, size <= SplitVirtqueue.maxSize, size & (size - 1) == 0 else {
            throw VirtqueueError.queueSizeInvalid(size)
        }
        self.index = index
        self.size = UInt16(size)
        self.eventIdx = features & VirtioFeature.ringEventIdx != 0
        self.indirect = features & VirtioFeature.ringIndirectDesc != 0
        self.addresses = addresses
        var memory = memory
        let (d, a, u) = try SplitVirtqueue.mapRings(addresses, size: Int(size), memory: &memory)
        self.memory = memory
        desc = d
        avail = a
        used = u
        self.lastAvailIdx = lastAvailIdx
        knownAvailIdx = lastAvailIdx
        // The used index is whatever the driver last saw; requests between it and lastAvailIdx were lost
        // with a previous backend (reconnect with in-flight tracking is its own feature).
        self.usedIdx = vdv_load_acquire_u16(u + 2)
        publishedIdx = usedIdx
    }

    /// Records in-flight requests in `region` from now on. If a previous backend used it and it says requests were
    /// in flight when that backend stopped, they come first out of popHead(), in their original order, and the avail ring resumes
    /// after them (whatever base the frontend set: a frontend that lost its backend rewinds to the used index).
    /// Returns how many will be resubmitted. Before the ring goes to its poller.
    public func trackInflight(_ region: SplitInflight) -> Int {
        var r = region
        defer { inflight = r }
        // A region no backend has used yet (a new device, or a migration's destination) says nothing: the base the
        // frontend set stands.
        guard let heads = r.recover(ringUsedIdx: usedIdx) else { return 0 }
        resubmit = heads
        resubmitNext = 0
        lastAvailIdx = usedIdx &+ UInt16(truncatingIfNeeded: resubmit.count)
        knownAvailIdx = lastAvailIdx
        return resubmit.count
    }

    /// virtio 1.3, 2.7: descriptor table 16-aligned, avail 2-aligned, used 4-aligned; sizes include event fields.
    static func mapRings(_ a: VringAddresses, size: Int, memory: inout GuestMemory) throws
        -> (UnsafeMutableRawPointer, UnsafeMutableRawPointer, UnsafeMutableRawPointer) {
        guard a.descriptorTable % 16 == 0 else { throw VirtqueueError.ringAddressInvalid("descriptor table misaligned") }
        guard a.availRing % 2 == 0 else { throw VirtqueueError.ringAddressInvalid("avail ring misaligned") }
        guard a.usedRing % 4 == 0 else { throw VirtqueueError.ringAddressInvalid("used ring misaligned") }
        func map(_ addr: UInt64, _ len: Int, _ what: String) throws -> UnsafeMutableRawPointer {
            if a.guestPhysical, memory.translate(gpa: addr, length: UInt64(len)) == nil,
               let m = memory.faultingIn(gpa: addr) { memory = m }
            let p = a.guestPhysical ? memory.translate(gpa: addr, length: UInt64(len))
                                    : memory.translate(userAddress: addr, length: UInt64(len))
            guard let p else { throw VirtqueueError.ringAddressInvalid("\(what) outside guest memory") }
            return p
        }
        return (try map(a.descriptorTable, 16 * size, "descriptor table"),
                try map(a.availRing, 6 + 2 * size, "avail ring"),
                try map(a.usedRing, 6 + 8 * size, "used ring"))
    }

    /// Re-translates the rings after a memory table change.
    public func remap(memory: GuestMemory) throws {
        var memory = memory
        let (d, a, u) = try SplitVirtqueue.mapRings(addresses, size: Int(size), memory: &memory)
        self.memory = memory
        desc = d
        avail = a
        used = u
    }

    // MARK: avail side

    /// Entries the driver has made available and we have not consumed. Acquire: ring entries before idx.
    @inline(__always)
    public func pendingCount() throws -> UInt16 {
        let idx = vdv_load_acquire_u16(avail + 2)
        let n = idx &- lastAvailIdx
        // virtio 1.3, 2.7.6: the driver cannot have more than queue-size entries outstanding.
        guard n <= size else { throw VirtqueueError.availIndexTooFar(n) }
        return n &+ UInt16(truncatingIfNeeded: resubmit.count - resubmitNext)
    }

    /// Takes the next head index off the avail ring (after any requests to resubmit); nil when empty.
    @inline(__always)
    public func popHead() throws -> UInt16? {
        if resubmitNext < resubmit.count {
            let head = resubmit[resubmitNext]
            resubmitNext += 1
            lastPop = (head, true)
            return head
        }
        if lastAvailIdx == knownAvailIdx {
            // Acquire: the entries up to idx are read after it.
            let idx = vdv_load_acquire_u16(avail + 2)
            let n = idx &- lastAvailIdx
            guard n <= size else { throw VirtqueueError.availIndexTooFar(n) }
            guard n > 0 else { return nil }
            knownAvailIdx = idx
        }
        let slot = Int(lastAvailIdx & (size &- 1))
        let head = vdv_load_relaxed_u16(avail + 4 + 2 * slot)
        guard head < size else { throw VirtqueueError.headIndexOutOfRange(head) }
        lastAvailIdx &+= 1
        lastPop = (head, false)
        inflight?.started(head)
        return head
    }

    /// Starts loading the descriptors of up to `count` heads the driver has made available and popHead() has not
    /// taken yet (a receive path that knows how many buffers it is about to fill). Reads nothing it must trust:
    /// heads are masked to the ring, and popHead() checks them when they are taken.
    @inline(__always)
    public func prefetchAvailable(_ count: Int) {
        var known = knownAvailIdx
        if lastAvailIdx == known {
            known = vdv_load_acquire_u16(avail + 2)
            guard known &- lastAvailIdx <= size else { return }
            knownAvailIdx = known
        }
        let n = min(count, Int(known &- lastAvailIdx))
        for i in 0..<n {
            let slot = Int((lastAvailIdx &+ UInt16(truncatingIfNeeded: i)) & (size &- 1))
            prefetchDescriptor(head: vdv_load_relaxed_u16(avail + 4 + 2 * slot))
        }
    }

    /// Starts loading a popped head's descriptor (a line the driver wrote on another CPU) before it is read.
    @inline(__always)
    public func prefetchDescriptor(head: UInt16) {
        vdv_prefetch(desc + Int(head & (size &- 1)) * SplitVirtqueue.descriptorSize)
    }

    /// Undo the last pop (the request could not be started for lack of a slot; it will be popped again). Several
    /// pops in a row may be undone only on a ring without in-flight tracking (vsock's rx).
    public func unpop() {
        if lastPop.resubmitted {
            resubmitNext -= 1
        } else {
            lastAvailIdx &-= 1
            inflight?.unstarted(lastPop.head)
        }
    }

    /// Walks and validates the chain starting at head (virtio 1.3, 2.7.5), filling seg with host buffers.
    /// Every descriptor is copied out of guest memory once and the copy is checked.
    public func readChain(head: UInt16, into seg: inout ChainSegments) throws {
        seg.reset()
        var table = desc
        var tableSize = UInt32(size)
        var idx = UInt32(head)
        var visited: UInt32 = 0
        var limit = UInt32(size)
        var inIndirect = false
        var seenWritable = false
        var total: UInt64 = 0
        while true {
            guard idx < tableSize else { throw VirtqueueError.descriptorIndexOutOfRange(UInt16(truncatingIfNeeded: idx)) }
            // 2.7.5.3.1: a chain is never longer than the queue (or the indirect table): catches loops.
            visited += 1
            guard visited <= limit else { throw VirtqueueError.chainTooLong }
            let base = Int(idx) * SplitVirtqueue.descriptorSize
            let addr = table.loadUnaligned(fromByteOffset: base, as: UInt64.self)
            let len = table.loadUnaligned(fromByteOffset: base + 8, as: UInt32.self)
            let flags = table.loadUnaligned(fromByteOffset: base + 12, as: UInt16.self)
            let next = table.loadUnaligned(fromByteOffset: base + 14, as: UInt16.self)

            if flags & SplitVirtqueue.flagIndirect != 0 {
                guard indirect else { throw VirtqueueError.indirectNotNegotiated }
                guard !inIndirect else { throw VirtqueueError.nestedIndirect }
                guard flags & SplitVirtqueue.flagNext == 0 else { throw VirtqueueError.indirectWithNext }
                let count = len / UInt32(SplitVirtqueue.descriptorSize)
                guard len > 0, len % UInt32(SplitVirtqueue.descriptorSize) == 0, count <= UInt32(size) else {
                    throw VirtqueueError.indirectTableInvalid(len)
                }
                guard let t = memory.translate(gpa: addr, length: UInt64(len))
                        ?? (faultIn(addr) ? memory.translate(gpa: addr, length: UInt64(len)) : nil) else {
                    throw VirtqueueError.descriptorOutsideMemory(addr, len)
                }
                table = t
                tableSize = count
                idx = 0
                visited = 0
                limit = count
                inIndirect = true
                continue
            }

            let writable = flags & SplitVirtqueue.flagWrite != 0
            // 2.7.4.2: all device-writable descriptors come after the device-readable ones.
            if writable { seenWritable = true } else if seenWritable { throw VirtqueueError.readableAfterWritable }
            total += UInt64(len)
            guard total <= UInt64(UInt32.max) else { throw VirtqueueError.lengthOverflow }
            try appendBuffer(addr: addr, len: len, writable: writable, into: &seg)

            guard flags & SplitVirtqueue.flagNext != 0 else { break }
            idx = UInt32(next)
        }
    }

    /// Adds one descriptor's buffer, split where it crosses a region boundary.
    @inline(__always)
    private func appendBuffer(addr: UInt64, len: UInt32, writable: Bool, into seg: inout ChainSegments) throws {
        guard len > 0 else { return }
        let (end, overflow) = addr.addingReportingOverflow(UInt64(len))
        guard !overflow else { throw VirtqueueError.descriptorOutsideMemory(addr, len) }
        var a = addr
        while a < end {
            guard let (p, avail) = memory.lookup(gpa: a) ?? (faultIn(a) ? memory.lookup(gpa: a) : nil) else {
                throw VirtqueueError.descriptorOutsideMemory(addr, len)
            }
            let n = min(avail, end - a)
            guard seg.append(p, Int(n), writable: writable) else { throw VirtqueueError.tooManySegments }
            if writable { seg.writableBytes += n } else { seg.readableBytes += n }
            a += n
        }
    }

    /// A miss on memory with a faulter (VDUSE): this queue's snapshot grows by the region holding `gpa`. Rare
    /// (once per mapping), so off the inlined path.
    @inline(never)
    private func faultIn(_ gpa: UInt64) -> Bool {
        guard memory.faulter != nil, let m = memory.faultingIn(gpa: gpa) else { return false }
        memory = m
        return true
    }

    // MARK: used side

    /// Writes a used element (virtio 1.3, 2.7.8); visible to the driver after publishUsed().
    @inline(__always)
    public func pushUsed(head: UInt16, length: UInt32) {
        inflight?.used(head)
        let slot = Int(usedIdx & (size &- 1))
        let e = used + 4 + 8 * slot
        e.storeBytes(of: UInt32(head), toByteOffset: 0, as: UInt32.self)
        e.storeBytes(of: length, toByteOffset: 4, as: UInt32.self)
        usedIdx &+= 1
    }

    /// Release: the used elements are written before the driver can see the new index.
    @inline(__always)
    public func publishUsed() {
        vdv_store_release_u16(used + 2, usedIdx)
        inflight?.published(count: Int(usedIdx &- publishedIdx), ringUsedIdx: usedIdx)
        publishedIdx = usedIdx
    }

    /// Whether the driver wants an interrupt for what was published since the last call (2.7.7.2, 2.7.10).
    public func needsInterrupt() -> Bool {
        // Full fence: our used idx store must be ordered before reading the driver's suppression fields.
        vdv_fence_seq_cst()
        if !eventIdx {
            let flags = vdv_load_relaxed_u16(avail)
            return flags & SplitVirtqueue.availFlagNoInterrupt == 0
        }
        let old = signalledUsed
        let valid = signalledUsedValid
        let new = usedIdx
        signalledUsed = new
        signalledUsedValid = true
        if !valid { return true }
        let usedEvent = vdv_load_relaxed_u16(avail + 4 + 2 * Int(size))
        // vring_need_event: did new pass used_event since old?
        return (new &- usedEvent &- 1) < (new &- old)
    }

    /// Asks the driver to kick us for new buffers (before sleeping). The caller re-checks pendingCount() after.
    public func enableNotifications() {
        if eventIdx {
            vdv_store_relaxed_u16(used + 4 + 8 * Int(size), lastAvailIdx)
        } else {
            let f = vdv_load_relaxed_u16(used)
            vdv_store_relaxed_u16(used, f & ~SplitVirtqueue.usedFlagNoNotify)
        }
        notificationsEnabled = true
        // The store above must be visible before we re-read avail idx, or a kick can be lost.
        vdv_fence_seq_cst()
    }

    /// Tells the driver not to kick while we poll (2.7.10).
    public func disableNotifications() {
        guard notificationsEnabled else { return }
        notificationsEnabled = false
        if !eventIdx {
            let f = vdv_load_relaxed_u16(used)
            vdv_store_relaxed_u16(used, f | SplitVirtqueue.usedFlagNoNotify)
        }
        // With EVENT_IDX the driver kicks only when it passes avail_event; leaving it stale suppresses kicks.
    }
}
