import XCTest
import Virtio
import VhostUserTestSupport
import CVdevd
#if canImport(Glibc)
import Glibc
#endif

/// Completes every chain at once, writing `marker` into its first writable byte.
final class MarkerHandler: QueueHandler {
    let binding: QueueBinding
    let stats = QueueStats()
    let marker: UInt8
    private var seg = ChainSegments(capacity: 8)
    var inflight: Int { 0 }

    init(binding: QueueBinding, marker: UInt8) {
        self.binding = binding
        self.marker = marker
    }

    deinit { seg.deallocate() }

    func process() throws -> Bool {
        var did = false
        while let head = try binding.vq.popHead() {
            try binding.vq.readChain(head: head, into: &seg)
            var m = marker
            let n = withUnsafeBytes(of: &m) { seg.copyToWritable(offset: 0, from: $0.baseAddress!, length: 1) }
            binding.complete(head: head, length: UInt32(n))
            did = true
        }
        return did
    }

    func complete(tag: UInt32, result: Int32) {}

    /// Avail entries waiting; an index the guest broke counts as work so process() reports it.
    func hasPendingWork() -> Bool { (try? binding.vq.pendingCount()).map { $0 > 0 } ?? true }

    private let detachLock = Lock()
    private var detachCount = 0
    var timesDetached: Int { detachLock.withLock { detachCount } }
    func detached() { detachLock.withLock { detachCount += 1 } }
}

/// Submits a NOP to the poller's io_uring per chain and completes the chain when the NOP comes back.
final class NopHandler: QueueHandler {
    let context: QueueContext
    let stats = QueueStats()
    private(set) var inflight = 0

    init(context: QueueContext) { self.context = context }

    func process() throws -> Bool {
        var did = false
        while let head = try context.binding.vq.popHead() {
            let ud = IORing.userData(slot: context.slot, tag: UInt32(head))
            guard vdv_uring_prep_nop(context.ioRing.ring, ud) == 0 else {
                context.binding.vq.unpop()
                break
            }
            _ = vdv_uring_submit(context.ioRing.ring)
            inflight += 1
            did = true
        }
        return did
    }

    func complete(tag: UInt32, result: Int32) {
        inflight -= 1
        // The length says which queue slot the completion was routed to.
        context.binding.complete(head: UInt16(tag), length: 1000 + UInt32(context.slot))
    }

    func hasPendingWork() -> Bool { (try? context.binding.vq.pendingCount()).map { $0 > 0 } ?? true }
}

/// onError calls, recorded from the poller thread.
final class ErrorLog {
    private let lock = Lock()
    private var errors: [Error] = []
    func record(_ e: Error) { lock.withLock { errors.append(e) } }
    var all: [Error] { lock.withLock { errors } }
}

/// One driver queue in shared RAM served by a poller, with its kick and call eventfds.
final class PolledQueue {
    let driver: DriverVirtqueue
    let kick: EventFD
    let call: EventFD
    let binding: QueueBinding
    let errors = ErrorLog()

    init(ram: GuestRAM, memory: GuestMemory, size: UInt16 = 8, lastAvailIdx: UInt16 = 0, name: String) throws {
        driver = DriverVirtqueue(ram: ram, size: size)
        driver.setAvailIndex(lastAvailIdx)
        kick = try EventFD()
        call = try EventFD()
        let vq = try SplitVirtqueue(
            index: 0, size: UInt32(size),
            addresses: VringAddresses(descriptorTable: driver.descGPA, availRing: driver.availGPA,
                                      usedRing: driver.usedGPA, guestPhysical: true),
            memory: memory, features: 0, lastAvailIdx: lastAvailIdx)
        let errors = self.errors
        binding = QueueBinding(name: name, vq: vq, kick: kick, call: call, stats: QueueStats(),
                               onError: { errors.record($0) })
    }

    /// Makes a one-byte writable buffer available and kicks; returns (head, buffer gpa).
    @discardableResult
    func submit(_ ram: GuestRAM) -> (head: UInt16, gpa: UInt64) {
        let gpa = ram.allocate(1, alignment: 1)
        ram.fill(gpa, 1, byte: 0)
        let head = driver.add([.init(gpa: gpa, length: 1, writable: true)])
        kick.signal()
        return (head, gpa)
    }
}

final class PollerTests: XCTestCase {
    var ram: GuestRAM!
    var memory: GuestMemory!
    var poller: Poller!

    override func setUpWithError() throws {
        ram = try GuestRAM(size: 1 << 20, guestAddress: 0x1000_0000)
        memory = GuestMemory(regions: [try mapRegion(ram)])
        poller = try Poller(id: 7, ringEntries: 64)
        poller.start()
    }

    override func tearDown() {
        poller?.stop()
        poller = nil
        memory = nil
        ram = nil
    }

    /// The handlers made, so tests can look at them after the poller is done with them.
    var handlers: [MarkerHandler] = []

    func attachMarker(_ q: PolledQueue, marker: UInt8) throws -> UInt16 {
        let made = Lock()
        var handler: MarkerHandler?
        let slot = try poller.attach(q.binding) { ctx in
            let h = MarkerHandler(binding: ctx.binding, marker: marker)
            made.withLock { handler = h }
            return h
        }
        handlers.append(made.withLock { handler! })
        return slot
    }

    func testKickedQueueIsServedAndCallIsSignalled() throws {
        let q = try PolledQueue(ram: ram, memory: memory, name: "q0")
        _ = try attachMarker(q, marker: 0xA5)
        XCTAssertEqual(poller.queueCount, 1)
        let (head, gpa) = q.submit(ram)

        let used = try XCTUnwrap(q.driver.waitUsed(timeout: 10), "no used entry")
        XCTAssertEqual(used.head, head)
        XCTAssertEqual(used.length, 1)
        XCTAssertEqual(ram.read(gpa, 1), [0xA5])
        XCTAssertTrue(isReadable(q.call.fd, timeoutMs: 10_000), "call eventfd not signalled")
        XCTAssertGreaterThan(q.call.drain(), 0)
        XCTAssertTrue(waitUntil { q.binding.stats.get(.notifications) >= 1 })
        XCTAssertTrue(q.errors.all.isEmpty)
    }

    func testServesSeveralChainsInOrder() throws {
        let q = try PolledQueue(ram: ram, memory: memory, name: "q0")
        _ = try attachMarker(q, marker: 0x11)
        var expected: [UInt16] = []
        for _ in 0..<20 {
            expected.append(q.submit(ram).head)
            if expected.count % 4 == 0 {
                // Let the driver reclaim descriptors (8-entry queue) before adding more.
                for _ in 0..<4 { XCTAssertEqual(q.driver.waitUsed(timeout: 10)?.head, expected.removeFirst()) }
            }
        }
        XCTAssertTrue(expected.isEmpty)
        XCTAssertEqual(q.driver.usedIndex, 20)
    }

    func testDetachReturnsLastAvailIndex() throws {
        // Resumed at avail index 100 while the used index is 0 (requests lost with a previous backend),
        // so the avail and used counts differ.
        let q = try PolledQueue(ram: ram, memory: memory, lastAvailIdx: 100, name: "q0")
        let slot = try attachMarker(q, marker: 1)
        for _ in 0..<3 {
            q.submit(ram)
            XCTAssertNotNil(q.driver.waitUsed(timeout: 10))
        }
        XCTAssertEqual(q.driver.usedIndex, 3)
        XCTAssertEqual(handlers[0].timesDetached, 0)
        XCTAssertEqual(poller.detach(slot: slot), 103)
        XCTAssertEqual(poller.queueCount, 0)
        XCTAssertEqual(handlers[0].timesDetached, 1, "the handler hears it left the poller")
        // The slot is free again.
        let q2 = try PolledQueue(ram: ram, memory: memory, name: "q1")
        XCTAssertEqual(try attachMarker(q2, marker: 2), slot)
        let (head, gpa) = q2.submit(ram)
        XCTAssertEqual(q2.driver.waitUsed(timeout: 10)?.head, head)
        XCTAssertEqual(ram.read(gpa, 1), [2])
    }

    func testAttachFailureIsReportedAndLeavesNoQueue() throws {
        struct NoHandler: Error, Equatable {}
        let q = try PolledQueue(ram: ram, memory: memory, name: "q0")
        XCTAssertThrowsError(try poller.attach(q.binding) { _ in throw NoHandler() }) {
            XCTAssertEqual($0 as? NoHandler, NoHandler())
        }
        XCTAssertEqual(poller.queueCount, 0)
        // The poller still serves a queue attached afterwards.
        _ = try attachMarker(q, marker: 4)
        XCTAssertEqual(poller.queueCount, 1)
        let (head, gpa) = q.submit(ram)
        XCTAssertEqual(q.driver.waitUsed(timeout: 10)?.head, head)
        XCTAssertEqual(ram.read(gpa, 1), [4])
    }

    func testBrokenQueueStopsAloneAndReportsOnce() throws {
        let bad = try PolledQueue(ram: ram, memory: memory, name: "bad")
        let good = try PolledQueue(ram: ram, memory: memory, name: "good")
        let badSlot = try attachMarker(bad, marker: 0xBA)
        _ = try attachMarker(good, marker: 0x60)

        // One good request on the bad queue first, then a head out of range (the guest broke 2.7.6).
        bad.submit(ram)
        XCTAssertNotNil(bad.driver.waitUsed(timeout: 10))
        bad.driver.publish(8)
        bad.kick.signal()
        XCTAssertTrue(waitUntil { !bad.errors.all.isEmpty }, "onError not called")
        XCTAssertEqual(bad.errors.all.first as? VirtqueueError, .headIndexOutOfRange(8))

        // The other queue on the same poller keeps working, and the broken one is not retried.
        for _ in 0..<3 {
            bad.kick.signal()
            let (head, gpa) = good.submit(ram)
            XCTAssertEqual(good.driver.waitUsed(timeout: 10)?.head, head)
            XCTAssertEqual(ram.read(gpa, 1), [0x60])
        }
        XCTAssertEqual(bad.errors.all.count, 1)
        XCTAssertTrue(good.errors.all.isEmpty)
        XCTAssertEqual(bad.driver.usedIndex, 1, "nothing more was returned on the broken queue")
        XCTAssertEqual(poller.detach(slot: badSlot), 1, "the bad head was never consumed")
    }

    func testChainErrorInHandlerStopsQueue() throws {
        let q = try PolledQueue(ram: ram, memory: memory, name: "q0")
        _ = try attachMarker(q, marker: 3)
        q.driver.writeDescriptor(0, addr: 0x10, len: 8, flags: descWrite, next: 0)   // not guest RAM
        q.driver.publish(0)
        q.kick.signal()
        XCTAssertTrue(waitUntil { !q.errors.all.isEmpty })
        XCTAssertEqual(q.errors.all.first as? VirtqueueError, .descriptorOutsideMemory(0x10, 8))
        XCTAssertEqual(q.driver.usedIndex, 0)
    }

    func testIORingCompletionsReachTheQueueThatSubmitted() throws {
        let a = try PolledQueue(ram: ram, memory: memory, name: "a")
        let b = try PolledQueue(ram: ram, memory: memory, name: "b")
        let slotA = try poller.attach(a.binding) { NopHandler(context: $0) }
        let slotB = try poller.attach(b.binding) { NopHandler(context: $0) }
        XCTAssertNotEqual(slotA, slotB)
        let ha = a.submit(ram).head
        let hb = b.submit(ram).head
        let ua = try XCTUnwrap(a.driver.waitUsed(timeout: 10))
        let ub = try XCTUnwrap(b.driver.waitUsed(timeout: 10))
        XCTAssertEqual(ua.head, ha)
        XCTAssertEqual(ua.length, 1000 + UInt32(slotA))
        XCTAssertEqual(ub.head, hb)
        XCTAssertEqual(ub.length, 1000 + UInt32(slotB))
        XCTAssertEqual(poller.detach(slot: slotA), 1)
        XCTAssertEqual(poller.detach(slot: slotB), 1)
    }

    func testMemoryUpdateKeepsQueueServingThroughNewMapping() throws {
        let q = try PolledQueue(ram: ram, memory: memory, name: "q0")
        let slot = try attachMarker(q, marker: 0x42)
        let newMemory = GuestMemory(regions: [try mapRegion(ram)])
        poller.updateMemory(slots: [slot], memory: newMemory)
        XCTAssertTrue(q.binding.vq.memory === newMemory)
        let (head, gpa) = q.submit(ram)
        XCTAssertEqual(q.driver.waitUsed(timeout: 10)?.head, head)
        XCTAssertEqual(ram.read(gpa, 1), [0x42])
        XCTAssertTrue(q.errors.all.isEmpty)
    }

    func testMemoryUpdateWithoutTheRingsStopsOnlyThatQueue() throws {
        let lost = try PolledQueue(ram: ram, memory: memory, name: "lost")
        let kept = try PolledQueue(ram: ram, memory: memory, name: "kept")
        let lostSlot = try attachMarker(lost, marker: 1)
        _ = try attachMarker(kept, marker: 2)
        poller.updateMemory(slots: [lostSlot], memory: .empty)
        XCTAssertEqual(lost.errors.all.count, 1)
        XCTAssertNotNil(lost.errors.all.first.flatMap(ringAddressProblem))
        let (head, _) = kept.submit(ram)
        XCTAssertEqual(kept.driver.waitUsed(timeout: 10)?.head, head)
    }

    func testReplacedCallFdIsSignalledInsteadOfOldOne() throws {
        let q = try PolledQueue(ram: ram, memory: memory, name: "q0")
        let slot = try attachMarker(q, marker: 9)
        let newCall = try EventFD()
        poller.replaceCall(slot: slot, call: newCall)
        q.submit(ram)
        XCTAssertNotNil(q.driver.waitUsed(timeout: 10))
        XCTAssertTrue(isReadable(newCall.fd, timeoutMs: 10_000))
        XCTAssertFalse(isReadable(q.call.fd, timeoutMs: 0))
    }
}
