import XCTest
import Virtio
import VhostUserTestSupport
import CVdevd
#if canImport(Glibc)
import Glibc
#endif

// Queue ownership across a PollerGroup, queue hand-off between pollers with requests in flight, and the
// lost-wakeup race between a sleeping poller and a driver that kicks only when asked to (virtio 1.3, 2.7.10).
// Every helper here is private to this file.

/// The kernel's name of the calling thread (pollers name themselves "vdevd-poll<id>").
private func ownThreadName() -> String {
    let fd = open("/proc/thread-self/comm", O_RDONLY)
    guard fd >= 0 else { return "?" }
    defer { close(fd) }
    var buf = [UInt8](repeating: 0, count: 32)
    let n = read(fd, &buf, buf.count)
    guard n > 0 else { return "?" }
    var s = Array(buf.prefix(n))
    while let last = s.last, last == 10 || last == 0 { s.removeLast() }
    return String(decoding: s, as: UTF8.self)
}

private func nowSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// Echo device: each chain is [1 readable byte b][2 writable bytes]; the device writes [b + 1, marker].
/// With `async`, each chain goes through an io_uring NOP first, so requests are in flight across a poller pass.
private final class EchoHandler: QueueHandler {
    let context: QueueContext
    let stats = QueueStats()
    let marker: UInt8
    let async: Bool
    private var seg = ChainSegments(capacity: 8)
    private var pending: [UInt32: (head: UInt16, reply: [UInt8])] = [:]
    private var nextTag: UInt32 = 0
    private(set) var inflight = 0
    /// Thread names seen in process(), and chains served (read by the test thread).
    private let lock = Lock()
    private var threads: Set<String> = []
    private var served = 0

    init(context: QueueContext, marker: UInt8, async: Bool) {
        self.context = context
        self.marker = marker
        self.async = async
    }

    deinit { seg.deallocate() }

    var threadNames: Set<String> { lock.withLock { threads } }
    var chainsServed: Int { lock.withLock { served } }

    func process() throws -> Bool {
        let name = ownThreadName()
        lock.withLock { _ = threads.insert(name) }
        var did = false
        let vq = context.binding.vq
        while let head = try vq.popHead() {
            try vq.readChain(head: head, into: &seg)
            var b: UInt8 = 0
            _ = withUnsafeMutableBytes(of: &b) { seg.copyReadable(offset: 0, into: $0.baseAddress!, length: 1) }
            let reply: [UInt8] = [b &+ 1, marker]
            if async {
                let tag = nextTag
                nextTag &+= 1
                guard vdv_uring_prep_nop(context.ioRing.ring, IORing.userData(slot: context.slot, tag: tag)) == 0 else {
                    vq.unpop()
                    break
                }
                _ = vdv_uring_submit(context.ioRing.ring)
                pending[tag] = (head, reply)
                inflight += 1
            } else {
                finish(head: head, reply: reply)
            }
            did = true
        }
        return did
    }

    private func finish(head: UInt16, reply: [UInt8]) {
        _ = reply.withUnsafeBytes { seg.copyToWritable(offset: 0, from: $0.baseAddress!, length: reply.count) }
        context.binding.complete(head: head, length: 2)
        lock.withLock { served += 1 }
    }

    func complete(tag: UInt32, result: Int32) {
        guard let p = pending.removeValue(forKey: tag) else { return }
        inflight -= 1
        // The chain was walked when it was popped; walk it again (the descriptors are still ours).
        if (try? context.binding.vq.readChain(head: p.head, into: &seg)) != nil {
            finish(head: p.head, reply: p.reply)
        }
    }

    func hasPendingWork() -> Bool { (try? context.binding.vq.pendingCount()).map { $0 > 0 } ?? true }
}

/// One driver ring in test RAM with its kick/call eventfds; builds device-side queues over it.
private final class EchoRing {
    let ram: GuestRAM
    let memory: GuestMemory
    let driver: DriverVirtqueue
    let kick: EventFD
    let call: EventFD
    let features: UInt64
    private let errorLock = Lock()
    private var errs: [Error] = []
    /// Per-descriptor-head buffers, reused: the readable byte and the two writable bytes.
    private var inBuf: [UInt16: (r: UInt64, w: UInt64)] = [:]

    init(ram: GuestRAM, memory: GuestMemory, size: UInt16, features: UInt64 = 0) throws {
        self.ram = ram
        self.memory = memory
        self.features = features
        driver = DriverVirtqueue(ram: ram, size: size)
        driver.eventIdx = features & VirtioFeature.ringEventIdx != 0
        kick = try EventFD()
        call = try EventFD()
    }

    var recordedErrors: [Error] { errorLock.withLock { errs } }
    private func record(_ e: Error) { errorLock.withLock { errs.append(e) } }

    /// A fresh device-side queue over this ring, resuming at `lastAvailIdx`.
    func binding(lastAvailIdx: UInt16, name: String) throws -> QueueBinding {
        let vq = try SplitVirtqueue(
            index: 0, size: UInt32(driver.size),
            addresses: VringAddresses(descriptorTable: driver.descGPA, availRing: driver.availGPA,
                                      usedRing: driver.usedGPA, guestPhysical: true),
            memory: memory, features: features, lastAvailIdx: lastAvailIdx)
        return QueueBinding(name: name, vq: vq, kick: kick, call: call, stats: QueueStats(),
                            onError: { [weak self] e in self?.record(e) })
    }

    /// Makes one echo chain available carrying `value`; does not kick. Returns (head, reply gpa).
    func post(_ value: UInt8) -> (head: UInt16, reply: UInt64) {
        let r = ram.allocate(1, alignment: 1)
        let w = ram.allocate(2, alignment: 2)
        ram.write(r, [value])
        ram.write(w, [0, 0])
        let head = driver.add([.init(gpa: r, length: 1, writable: false), .init(gpa: w, length: 2, writable: true)])
        return (head, w)
    }
}

final class PollerOwnershipTests: XCTestCase {
    var ram: GuestRAM!
    var memory: GuestMemory!
    var group: PollerGroup?
    var lonePoller: Poller?

    override func setUpWithError() throws {
        try super.setUpWithError()
        ram = try GuestRAM(size: 8 << 20, guestAddress: 0x2000_0000)
        memory = GuestMemory(regions: [try MemoryRegion(fd: ram.fd, guestAddress: ram.guestAddress, size: ram.size,
                                                        userAddress: ram.userAddress, mmapOffset: 0)])
    }

    override func tearDown() {
        group?.stopAll()
        group = nil
        lonePoller?.stop()
        lonePoller = nil
        memory = nil
        ram = nil
        super.tearDown()
    }

    private func attachEcho(_ p: Poller, _ ring: EchoRing, lastAvailIdx: UInt16 = 0, async: Bool = false,
                            marker: UInt8? = nil) throws -> (slot: UInt16, handler: EchoHandler) {
        let made = Lock()
        var handler: EchoHandler?
        let binding = try ring.binding(lastAvailIdx: lastAvailIdx, name: "echo")
        let m = marker ?? UInt8(p.id)
        let slot = try p.attach(binding) { ctx in
            let h = EchoHandler(context: ctx, marker: m, async: async)
            made.withLock { handler = h }
            return h
        }
        return (slot, made.withLock { handler! })
    }

    private func counts(_ g: PollerGroup) -> [Int] { g.pollers.map(\.queueCount) }

    // MARK: ownership

    func testPickBalancesQueuesAndEachQueueIsServedByItsPoller() throws {
        let g = try PollerGroup(count: 3)
        group = g
        XCTAssertEqual(g.pollers.map(\.id), [0, 1, 2])
        var attached: [(ring: EchoRing, poller: Poller, handler: EchoHandler)] = []
        for n in 1...8 {
            let p = g.pick()
            let ring = try EchoRing(ram: ram, memory: memory, size: 8)
            let (_, h) = try attachEcho(p, ring)
            attached.append((ring, p, h))
            let c = counts(g)
            XCTAssertEqual(c.reduce(0, +), n)
            XCTAssertLessThanOrEqual(c.max()! - c.min()!, 1, "after \(n) attaches: \(c)")
        }
        XCTAssertEqual(counts(g).sorted(), [2, 3, 3])
        // Each queue is served on its own poller's thread, which writes that poller's id as the marker.
        for (i, a) in attached.enumerated() {
            let (head, reply) = a.ring.post(UInt8(i))
            a.ring.kick.signal()
            let u = try XCTUnwrap(a.ring.driver.waitUsed(timeout: 10), "queue \(i) never served")
            XCTAssertEqual(u.head, head)
            XCTAssertEqual(ram.read(reply, 2), [UInt8(i) + 1, UInt8(a.poller.id)], "queue \(i)")
            XCTAssertEqual(a.handler.threadNames, ["vdevd-poll\(a.poller.id)"], "queue \(i)")
        }
    }

    func testPickPreferredReturnsThatPollerWhateverItsLoad() throws {
        let g = try PollerGroup(count: 3)
        group = g
        for k in 0..<3 { XCTAssertTrue(g.pick(preferred: k) === g.pollers[k]) }
        // Load poller 2 through the preferred path: it keeps being returned, the others stay empty.
        var rings: [EchoRing] = []
        for i in 0..<4 {
            let p = g.pick(preferred: 2)
            XCTAssertTrue(p === g.pollers[2])
            let ring = try EchoRing(ram: ram, memory: memory, size: 8)
            _ = try attachEcho(p, ring)
            rings.append(ring)
            XCTAssertEqual(counts(g), [0, 0, i + 1])
        }
        XCTAssertTrue(g.pick(preferred: 2) === g.pollers[2])
        // Without a preference the least loaded poller (the first of equals) is chosen.
        XCTAssertTrue(g.pick() === g.pollers[0])
        // A preference that names no poller falls back to the least loaded one.
        XCTAssertTrue(g.pick(preferred: 3) === g.pollers[0])
        XCTAssertTrue(g.pick(preferred: -1) === g.pollers[0])
        for (i, r) in rings.enumerated() {
            let (_, reply) = r.post(UInt8(40 + i))
            r.kick.signal()
            XCTAssertNotNil(r.driver.waitUsed(timeout: 10))
            XCTAssertEqual(ram.read(reply, 2), [UInt8(41 + i), 2])
        }
    }

    func testDetachDecrementsQueueCountAndPickRefillsThatPoller() throws {
        let g = try PollerGroup(count: 2)
        group = g
        var slots: [(Poller, UInt16, EchoRing)] = []
        for _ in 0..<4 {
            let p = g.pick()
            let ring = try EchoRing(ram: ram, memory: memory, size: 8)
            let (slot, _) = try attachEcho(p, ring)
            slots.append((p, slot, ring))
        }
        XCTAssertEqual(counts(g), [2, 2])
        XCTAssertEqual(slots.map { $0.0.id }, [0, 1, 0, 1])
        // Two requests on the queue about to leave poller 1; detach reports both consumed.
        let (p1, s1, r1) = slots[1]
        for v in [UInt8(5), 6] {
            _ = r1.post(v)
            r1.kick.signal()
            XCTAssertNotNil(r1.driver.waitUsed(timeout: 10))
        }
        XCTAssertEqual(p1.detach(slot: s1), 2)
        XCTAssertEqual(counts(g), [2, 1])
        XCTAssertTrue(g.pick() === g.pollers[1])
        // Re-attach through pick(): it lands on poller 1 and resumes at avail index 2.
        let (_, h) = try attachEcho(g.pick(), r1, lastAvailIdx: 2)
        XCTAssertEqual(counts(g), [2, 2])
        let (head, reply) = r1.post(7)
        r1.kick.signal()
        XCTAssertEqual(r1.driver.waitUsed(timeout: 10)?.head, head)
        XCTAssertEqual(ram.read(reply, 2), [8, 1])
        XCTAssertEqual(h.threadNames, ["vdevd-poll1"])
        // Detaching everything leaves every poller at zero.
        let (p0, s0, _) = slots[0]
        XCTAssertEqual(p0.detach(slot: s0), 0)
        XCTAssertEqual(counts(g), [1, 2])
        XCTAssertTrue(g.pick() === g.pollers[0])
    }

    // MARK: hand-off between pollers

    /// A ring stopped with requests in flight and restarted on the other poller, many times: every chain is
    /// completed exactly once, by exactly one poller, and detach's avail index is what the device consumed.
    func testQueueHandedBetweenPollersWithRequestsInFlightCompletesEachChainOnce() throws {
        let g = try PollerGroup(count: 2)
        group = g
        let ring = try EchoRing(ram: ram, memory: memory, size: 128)
        var completedBy: [Int: [UInt8]] = [:]     // request number -> markers of the pollers that completed it
        var headToRequest: [UInt16: (n: Int, reply: UInt64)] = [:]
        var nextRequest = 0
        var base: UInt16 = 0
        var owner = 0
        var sawPartial = 0
        for cycle in 0..<60 {
            let (slot, _) = try attachEcho(g.pick(preferred: owner), ring, lastAvailIdx: base, async: true)
            XCTAssertEqual(g.pollers[owner].queueCount, 1)
            XCTAssertEqual(g.pollers[1 - owner].queueCount, 0)
            ring.kick.signal()  // a start is followed by a kick (entries left by the last owner are pending)
            // Fill the ring to a varying depth, then stop at once. Three ways: kicked part way; the first half
            // kicked and completed, the second half added without a kick (the poller sleeps on it); or nothing
            // kicked at all. (Two descriptors a chain; what the last owner left unconsumed still holds its own.)
            let depth = min(8 + (cycle * 7) % 40, ring.driver.freeDescriptors / 2)
            for k in 0..<depth {
                if cycle % 3 == 1 && k == depth / 2 {
                    ring.kick.signal()
                    let target = UInt16(truncatingIfNeeded: nextRequest)
                    XCTAssertTrue(waitUntil { ring.driver.usedIndex == target }, "cycle \(cycle): first half never completed")
                }
                let (head, reply) = ring.post(UInt8(truncatingIfNeeded: nextRequest))
                headToRequest[head] = (nextRequest, reply)
                nextRequest += 1
                if cycle % 3 == 0 && k == depth / 2 { ring.kick.signal() }
            }
            let stoppedAt = g.pollers[owner].detach(slot: slot)
            XCTAssertEqual(g.pollers[owner].queueCount, 0)
            // Everything consumed was completed and published before detach returned.
            XCTAssertEqual(ring.driver.usedIndex, stoppedAt, "cycle \(cycle): used index after stop")
            XCTAssertTrue((stoppedAt &- base) <= UInt16(truncatingIfNeeded: nextRequest) &- base, "cycle \(cycle): consumed more than posted")
            if stoppedAt != UInt16(truncatingIfNeeded: nextRequest) { sawPartial += 1 }
            while let u = ring.driver.popUsed() {
                guard let r = headToRequest.removeValue(forKey: u.head) else {
                    XCTFail("cycle \(cycle): used head \(u.head) is not outstanding (completed twice?)")
                    continue
                }
                XCTAssertEqual(u.length, 2)
                let got = ram.read(r.reply, 2)
                XCTAssertEqual(got[0], UInt8(truncatingIfNeeded: r.n) &+ 1, "request \(r.n)")
                completedBy[r.n, default: []].append(got[1])
            }
            // What was not consumed is untouched and still available.
            for (_, r) in headToRequest { XCTAssertEqual(ram.read(r.reply, 2), [0, 0], "request \(r.n) ran after stop") }
            base = stoppedAt
            owner = 1 - owner
        }
        // Drain the tail on one last owner.
        let (slot, _) = try attachEcho(g.pick(preferred: owner), ring, lastAvailIdx: base, async: true)
        ring.kick.signal()
        while !headToRequest.isEmpty {
            guard let u = ring.driver.waitUsed(timeout: 10) else { XCTFail("\(headToRequest.count) never completed"); break }
            guard let r = headToRequest.removeValue(forKey: u.head) else { XCTFail("head \(u.head) twice"); continue }
            let got = ram.read(r.reply, 2)
            XCTAssertEqual(got[0], UInt8(truncatingIfNeeded: r.n) &+ 1)
            completedBy[r.n, default: []].append(got[1])
        }
        XCTAssertEqual(g.pollers[owner].detach(slot: slot), UInt16(truncatingIfNeeded: nextRequest))
        XCTAssertEqual(completedBy.count, nextRequest)
        XCTAssertEqual(completedBy.values.filter { $0.count != 1 }.count, 0, "requests completed more than once")
        // Both pollers did real work.
        let markers = Set(completedBy.values.flatMap { $0 })
        XCTAssertEqual(markers, [0, 1])
        XCTAssertTrue(ring.recordedErrors.isEmpty, "\(ring.recordedErrors)")
        print("hand-off: \(nextRequest) requests over 60 stops, \(sawPartial) stops left requests unconsumed")
    }

    // MARK: lost wakeup

    /// One request at a time; the driver kicks only when the device asked for it (exactly Linux's
    /// virtqueue_kick_prepare) and waits for the completion. A poller that sleeps with a request pending
    /// (notifications armed after its last look at the ring) hangs an iteration: the wait's timeout is only
    /// the safety net that turns the hang into a failure naming the iteration.
    private func runLostWakeup(pollMicroseconds: UInt64, eventIdx: Bool, iterations: Int) throws {
        let p = try Poller(id: 3, pollMicroseconds: pollMicroseconds, ringEntries: 64)
        p.start()
        lonePoller = p
        let ring = try EchoRing(ram: ram, memory: memory, size: 8,
                                features: eventIdx ? VirtioFeature.ringEventIdx : 0)
        XCTAssertEqual(ring.driver.eventIdx, eventIdx)
        let (slot, handler) = try attachEcho(p, ring, marker: 0x77)
        // Reused buffers: one readable byte, two writable.
        let rb = ram.allocate(1, alignment: 1)
        let wb = ram.allocate(2, alignment: 2)
        var kicked = 0, suppressed = 0
        var rng = SystemRandomNumberGenerator()
        for i in 0..<iterations {
            let v = UInt8(truncatingIfNeeded: i)
            ram.write(rb, [v])
            ram.write(wb, [0, 0])
            // EVENT_IDX: interrupt me for the next used entry (virtqueue_enable_cb).
            if eventIdx { ring.driver.setUsedEvent(UInt16(truncatingIfNeeded: i)) }
            // Vary the moment the buffer is added relative to the poller going to sleep.
            let jitter = Int.random(in: 0..<4, using: &rng)
            if jitter == 1 { for _ in 0..<Int.random(in: 1..<200, using: &rng) { vdv_cpu_relax() } }
            if jitter == 2 { usleep(UInt32.random(in: 1..<30, using: &rng)) }
            let old = ring.driver.availIndex
            let head = ring.driver.add([.init(gpa: rb, length: 1, writable: false), .init(gpa: wb, length: 2, writable: true)])
            let didKick = ring.driver.needsKick(since: old)
            if didKick { ring.kick.signal(); kicked += 1 } else { suppressed += 1 }
            // Half the waits spin on the used index (a fast driver), half sleep on the call eventfd after re-arming
            // the interrupt and looking once more (virtqueue_enable_cb + virtqueue_poll).
            let spin = i % 2 == 0
            let deadline = nowSeconds() + 10
            var used: (head: UInt16, length: UInt32)?
            var pollTimedOut = false
            while true {
                used = ring.driver.popUsed()
                if used != nil || nowSeconds() > deadline { break }
                if spin {
                    vdv_cpu_relax()
                    continue
                }
                if eventIdx { ring.driver.setUsedEvent(UInt16(truncatingIfNeeded: i)) }
                vdv_fence_seq_cst()
                if ring.driver.usedIndex != UInt16(truncatingIfNeeded: i) { continue }
                var pfd = pollfd(fd: ring.call.fd, events: Int16(POLLIN), revents: 0)
                if poll(&pfd, 1, Int32(max(1, (deadline - nowSeconds()) * 1000))) == 0 { pollTimedOut = true }
                ring.call.drain()
            }
            XCTAssertFalse(used != nil && pollTimedOut, "iteration \(i): completion published without the interrupt asked for")
            guard let u = used else {
                let published = ring.driver.usedIndex != UInt16(truncatingIfNeeded: i)
                XCTFail("iteration \(i): " + (published
                    ? "completion published but the call eventfd was never signalled (lost interrupt)"
                    : "request never completed — the poller slept with a request pending")
                    + " (kicked: \(didKick), avail \(ring.driver.availIndex), used \(ring.driver.usedIndex), "
                    + "used flags \(ring.driver.usedFlags), avail_event \(ring.driver.availEvent), chains served \(handler.chainsServed))")
                return
            }
            XCTAssertEqual(u.head, head, "iteration \(i)")
            XCTAssertEqual(ram.read(wb, 2), [v &+ 1, 0x77], "iteration \(i)")
            if u.head != head { return }
        }
        XCTAssertEqual(handler.chainsServed, iterations)
        XCTAssertEqual(p.detach(slot: slot), UInt16(truncatingIfNeeded: iterations))
        XCTAssertTrue(ring.recordedErrors.isEmpty)
        print("lost-wakeup poll-us=\(pollMicroseconds) event-idx=\(eventIdx): \(iterations) requests, "
              + "\(kicked) kicked, \(suppressed) suppressed by the device")
    }

    func testNoLostWakeupSleepingPollerWithoutEventIdx() throws {
        try runLostWakeup(pollMicroseconds: 0, eventIdx: false, iterations: 10_000)
    }

    func testNoLostWakeupSleepingPollerWithEventIdx() throws {
        try runLostWakeup(pollMicroseconds: 0, eventIdx: true, iterations: 10_000)
    }

    func testNoLostWakeupSpinningPollerWithoutEventIdx() throws {
        try runLostWakeup(pollMicroseconds: 20, eventIdx: false, iterations: 4_000)
    }

    func testNoLostWakeupSpinningPollerWithEventIdx() throws {
        try runLostWakeup(pollMicroseconds: 20, eventIdx: true, iterations: 4_000)
    }
}
