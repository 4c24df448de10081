#if canImport(Glibc)
import Glibc
#endif
import Blk
import CVdevd
import Exports
import Foundation
import VhostUserTestSupport
import Virtio
import XCTest

// Pollers as the exports use them: which poller owns which queue, stopping and restarting rings with
// requests in flight (GET_VRING_BASE / SET_VRING_BASE, queues moving between pollers), memory table changes
// under I/O, the lost-wakeup race through a real export, and two exports sharing one poller.
// Every helper here is private to this file.

/// Buffers of one request, in any guest RAM region; `pool` says which region they came from.
private struct HBufs {
    let ram: GuestRAM
    let pool: Int
    let header: UInt64
    let data: UInt64
    let status: UInt64
    let capacity: Int

    init(_ ram: GuestRAM, capacity: Int, pool: Int = 0) {
        self.ram = ram
        self.pool = pool
        self.capacity = capacity
        header = ram.allocate(16)
        data = ram.allocate(UInt64(capacity), alignment: 4096)
        status = ram.allocate(1, alignment: 1)
    }
}

/// One block request: a write of `bytes` at `sector`, or a read that must return `bytes`.
private struct HReq {
    let id: Int
    let write: Bool
    let sector: UInt64
    let bytes: [UInt8]
}

/// Write payload no other request writes: id and tag stamped into its first 16 bytes.
private func stamped(_ count: Int, id: Int, tag: Int) -> [UInt8] {
    var b = payload(count, seed: UInt8(truncatingIfNeeded: id &* 31 &+ tag &* 7))
    var h: [UInt8] = []
    h.le(UInt64(id))
    h.le(UInt64(tag))
    for i in 0..<min(16, count) { b[i] = h[i] }
    return b
}

/// Makes a request available (header, data, status) without kicking; returns its head.
private func post(_ q: DriverVirtqueue, _ b: HBufs, _ r: HReq) -> UInt16 {
    precondition(r.bytes.count <= b.capacity)
    b.ram.write(b.header, requestHeader(type: r.write ? BlkType.out : BlkType.in, sector: r.sector))
    b.ram.write(b.status, [0xff])
    if r.write { b.ram.write(b.data, r.bytes) } else { b.ram.fill(b.data, r.bytes.count, byte: 0xee) }
    return q.add([.init(gpa: b.header, length: 16, writable: false),
                  .init(gpa: b.data, length: UInt32(r.bytes.count), writable: !r.write),
                  .init(gpa: b.status, length: 1, writable: true)])
}

/// A completed request: status OK, the used length virtio-blk reports, and what a read returned. Nil if right.
private func completionProblem(_ b: HBufs, _ r: HReq, used: UInt32) -> String? {
    let st = b.ram.read(b.status, 1)[0]
    guard st == Status.ok else { return "request \(r.id): status \(st)" }
    let want = r.write ? UInt32(1) : UInt32(r.bytes.count) + 1
    guard used == want else { return "request \(r.id): used length \(used), expected \(want)" }
    if !r.write && b.ram.read(b.data, r.bytes.count) != r.bytes { return "request \(r.id): read returned wrong bytes" }
    return nil
}

/// A request the device has not consumed: status byte and read buffer untouched. Nil if right.
private func untouchedProblem(_ b: HBufs, _ r: HReq) -> String? {
    let st = b.ram.read(b.status, 1)[0]
    guard st == 0xff else { return "request \(r.id) was not consumed but has status \(st)" }
    if !r.write && b.ram.read(b.data, r.bytes.count) != [UInt8](repeating: 0xee, count: r.bytes.count) {
        return "request \(r.id) was not consumed but its buffer was written"
    }
    return nil
}

private func nowSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// A thread running `body`; join's timeout is a safety net.
private final class Job {
    private let cond = NSCondition()
    private var finished = false
    init(_ name: String, _ body: @escaping () -> Void) {
        let t = Thread { [self] in
            body()
            cond.lock()
            finished = true
            cond.broadcast()
            cond.unlock()
        }
        t.name = name
        t.start()
    }
    func join(timeout: Double = 60) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        cond.lock()
        defer { cond.unlock() }
        while !finished { if !cond.wait(until: deadline) { break } }
        return finished
    }
}

/// Parties wait for each other (the timeout is a safety net so a failed partner cannot hang the test).
private final class Rendezvous {
    private let cond = NSCondition()
    private var arrived = 0
    private var generation = 0
    private let parties: Int
    init(parties: Int) { self.parties = parties }
    func arrive() {
        cond.lock()
        defer { cond.unlock() }
        let g = generation
        arrived += 1
        if arrived == parties {
            arrived = 0
            generation += 1
            cond.broadcast()
            return
        }
        let deadline = Date().addingTimeInterval(30)
        while g == generation { if !cond.wait(until: deadline) { return } }
    }
}

/// Drives one ring from its own thread like a guest driver: keeps up to `buffers.count` requests outstanding,
/// kicks only when the device asks (needsKick), and records every completion. The control thread may stop and
/// restart the ring meanwhile; `restart` runs while the driver is held, so a kick never goes to a stale fd.
private final class RingDriver {
    let q: DriverVirtqueue
    let index: Int
    let limit: Int
    let make: (Int) -> HReq
    private let lock = Lock()
    private var kickFD: Int32
    private var free: [HBufs]
    private var outstanding: [UInt16: (HReq, HBufs)] = [:]
    private var stopping = false
    private var submitted = 0
    private var completed = 0
    private var perPool: [Int: Int] = [:]
    private var problemList: [String] = []
    private var requestList: [HReq] = []
    private var completions: [Int] = []

    init(queue: DriverVirtqueue, index: Int, kickFD: Int32, buffers: [HBufs], limit: Int, make: @escaping (Int) -> HReq) {
        q = queue
        self.index = index
        self.kickFD = kickFD
        free = buffers
        self.limit = limit
        self.make = make
    }

    var submittedCount: Int { lock.withLock { submitted } }
    var completedCount: Int { lock.withLock { completed } }
    func completed(pool: Int) -> Int { lock.withLock { perPool[pool] ?? 0 } }
    var problems: [String] { lock.withLock { problemList } }
    var requests: [HReq] { lock.withLock { requestList } }
    /// Times each request was completed, by id.
    var timesCompleted: [Int] { lock.withLock { completions } }
    func addBuffers(_ b: [HBufs]) { lock.withLock { free += b } }
    func finish() { lock.withLock { stopping = true } }
    func restart(_ start: () throws -> Int32) rethrows { try lock.withLock { kickFD = try start() } }

    func run() {
        var lastProgress = nowSeconds()
        while true {
            var did = false
            while let u = q.popUsed() {
                did = true
                lock.withLock {
                    guard let (r, b) = outstanding.removeValue(forKey: u.head) else {
                        problemList.append("queue \(index): used head \(u.head) is not outstanding (completed twice?)")
                        return
                    }
                    completions[r.id] += 1
                    if let p = completionProblem(b, r, used: u.length) { problemList.append("queue \(index): \(p)") }
                    free.append(b)
                    completed += 1
                    perPool[b.pool, default: 0] += 1
                }
            }
            let (posted, done, waiting): (Bool, Bool, Bool) = lock.withLock {
                if stopping && outstanding.isEmpty { return (false, true, false) }
                guard !stopping, submitted < limit, !free.isEmpty else { return (false, false, !outstanding.isEmpty) }
                let b = free.removeLast()
                let r = make(submitted)
                requestList.append(r)
                completions.append(0)
                let old = q.availIndex
                let head = post(q, b, r)
                outstanding[head] = (r, b)
                submitted += 1
                if q.needsKick(since: old) { kick(kickFD) }
                return (true, false, true)
            }
            if done { return }
            if posted || did {
                lastProgress = nowSeconds()
                continue
            }
            if waiting && nowSeconds() - lastProgress > 20 {
                lock.withLock {
                    problemList.append("queue \(index): no completion for 20 s with \(outstanding.count) outstanding "
                                       + "(avail \(q.availIndex), used \(q.usedIndex))")
                }
                return
            }
            usleep(50)
        }
    }
}

final class PollerHandoffTests: ExportTestCase {
    /// Poller ids from the "queue q started on poller p" lines of one export, oldest first.
    func startedOn(queue q: Int, export id: String = "disk0") -> [Int] {
        logs.all.compactMap { line in
            guard line.contains("export=\(id)]"), let r = line.range(of: "queue \(q) started on poller ") else { return nil }
            return Int(String(line[r.upperBound...].prefix(while: { $0.isNumber })))
        }
    }

    func queueCounts() -> [Int] { pollers!.pollers.map(\.queueCount) }

    // MARK: ownership

    func testFourQueuesOfOneExportSpreadOverBothPollers() throws {
        pollers = try PollerGroup(count: 2)
        let s = try serve(options: "num-queues=4")
        let c = try BlkTestClient(socket: s.socket, queueCount: 4)
        let owners = (0..<4).map { startedOn(queue: $0) }
        XCTAssertEqual(owners, [[0], [1], [0], [1]], "\(logs.all)")
        XCTAssertEqual(queueCounts(), [2, 2])
        // Every queue serves I/O, counted on its own queue.
        for q in 0..<4 {
            let data = stamped(4096, id: q, tag: 90)
            XCTAssertEqual(try c.write(sector: UInt64(64 * q), data: data, queue: q), Status.ok)
            XCTAssertEqual(try c.read(sector: UInt64(64 * q), count: 4096, queue: q).1, data)
            XCTAssertEqual(try readFile(s.image, offset: 64 * q * 512, count: 4096), data)
        }
        XCTAssertEqual((0..<4).map { s.requests($0) }, [2, 2, 2, 2])
        // Stopping the rings gives both pollers their queues back.
        for q in 0..<4 { XCTAssertEqual(try c.frontend.getVringBase(UInt32(q)), 2) }
        XCTAssertEqual(queueCounts(), [0, 0])
    }

    func testPollerOptionPinsEveryQueueOfTheExportToThatPoller() throws {
        pollers = try PollerGroup(count: 2)
        let s = try serve(options: "num-queues=4,poller=1")
        let c = try BlkTestClient(socket: s.socket, queueCount: 4)
        XCTAssertEqual((0..<4).map { startedOn(queue: $0) }, [[1], [1], [1], [1]], "\(logs.all)")
        XCTAssertEqual(queueCounts(), [0, 4])
        for q in 0..<4 {
            let r = try c.read(sector: UInt64(8 * q), count: 4096, queue: q)
            XCTAssertEqual(r.0, Status.ok)
            XCTAssertEqual(r.1, imageBytes(8 * q * 512, 4096))
        }
        // A ring restarted stays pinned even though poller 0 is idle.
        let base = try c.frontend.getVringBase(2)
        XCTAssertEqual(base, 1)
        XCTAssertEqual(queueCounts(), [0, 3])
        let (k, call) = try c.frontend.startVring(2, c.queues[2], base: base)
        fdsToClose += [k, call]
        XCTAssertEqual(startedOn(queue: 2), [1, 1])
        XCTAssertEqual(queueCounts(), [0, 4])
        let r = try rawRequest(Ring(ram: c.ram, queue: c.queues[2], kickFD: k), type: BlkType.in, sector: 3, inLengths: [512])
        XCTAssertEqual(r.status, Status.ok)
        XCTAssertEqual(r.data, imageBytes(3 * 512, 512))
    }

    func testPinnedQueuesCountWhenTheNextExportIsBalanced() throws {
        pollers = try PollerGroup(count: 2)
        let pinned = try serve(id: "pinned", options: "num-queues=2,poller=0")
        let free = try serve(id: "free", options: "num-queues=2")
        let c1 = try BlkTestClient(socket: pinned.socket, queueCount: 2)
        XCTAssertEqual(queueCounts(), [2, 0])
        let c2 = try BlkTestClient(socket: free.socket, queueCount: 2)
        // Poller 1 is the least loaded for both of the second export's queues.
        XCTAssertEqual(startedOn(queue: 0, export: "free") + startedOn(queue: 1, export: "free"), [1, 1])
        XCTAssertEqual(queueCounts(), [2, 2])
        for q in 0..<2 {
            XCTAssertEqual(try c1.read(sector: 0, count: 512, queue: q).1, imageBytes(0, 512))
            XCTAssertEqual(try c2.read(sector: 1, count: 512, queue: q).1, imageBytes(512, 512))
        }
    }

    // MARK: stop / start with requests in flight

    /// 64 requests made available, GET_VRING_BASE while they are in flight, then the ring restarted at the
    /// returned base with a new kick fd.
    private func stopAndRestartWithRequestsInFlight(options: String, kickLast: Bool) throws {
        let s = try serve(options: options, imageSize: 16 << 20)
        let c = try BlkTestClient(socket: s.socket, queueSize: 256)
        let q = c.queues[0]
        XCTAssertEqual(try c.read(sector: 0, count: 512).0, Status.ok)   // the ring runs; one request consumed
        var reqs: [(HReq, HBufs, UInt16)] = []
        for i in 0..<64 {
            let b = HBufs(c.ram, capacity: 4096)
            let r = i % 2 == 0
                ? HReq(id: i, write: true, sector: 2048 + UInt64(i) * 8, bytes: stamped(4096, id: i, tag: 1))
                : HReq(id: i, write: false, sector: 16384 + UInt64(i) * 8, bytes: imageBytes((16384 + i * 8) * 512, 4096))
            reqs.append((r, b, post(q, b, r)))
            // Kicked in batches for the first 40; the last 24 are added right before the stop, and kicked only
            // with `kickLast` (then the stop races the poller taking them).
            if (i < 40 && i % 8 == 7) || (kickLast && i == 63) { kick(c.kicks[0]) }
        }
        let usedBefore = Int(q.usedIndex)
        let base = Int(try c.frontend.getVringBase(0))
        let consumed = base - 1
        XCTAssertTrue((0...64).contains(consumed), "base \(base)")
        // Everything the device consumed was completed and published before GET_VRING_BASE answered.
        XCTAssertEqual(Int(q.usedIndex), base)
        XCTAssertEqual(s.requests(0), UInt64(base))
        var heads: [UInt16] = []
        while let u = q.popUsed() { heads.append(u.head) }
        XCTAssertEqual(heads.count, consumed)   // the warm-up read's entry was already taken by c.read
        let mine = heads
        XCTAssertEqual(Set(mine).count, mine.count, "a head was used twice: \(mine)")
        XCTAssertEqual(Set(mine), Set(reqs.prefix(max(consumed, 0)).map { $0.2 }), "used heads are not the first \(consumed) made available")
        let image0 = try readFile(s.image, offset: 0, count: 16 << 20)
        for (k, (r, b, _)) in reqs.enumerated() {
            if k < consumed {
                XCTAssertNil(completionProblem(b, r, used: r.write ? 1 : 4097))
                if r.write { XCTAssertEqual(Array(image0[Int(r.sector) * 512..<Int(r.sector) * 512 + 4096]), r.bytes, "request \(r.id)") }
            } else {
                XCTAssertNil(untouchedProblem(b, r))
                if r.write {
                    XCTAssertEqual(Array(image0[Int(r.sector) * 512..<Int(r.sector) * 512 + 4096]),
                                   imageBytes(Int(r.sector) * 512, 4096), "request \(r.id) not consumed but written")
                }
            }
        }
        // A second GET_VRING_BASE on the stopped ring reports the same base.
        XCTAssertEqual(Int(try c.frontend.getVringBase(0)), base)

        // Restart from the returned base: the rest complete exactly once.
        let (k2, call2) = try c.frontend.startVring(0, q, base: UInt32(base))
        fdsToClose += [k2, call2]
        kick(k2)
        var rest: [UInt16] = []
        let byHead = Dictionary(uniqueKeysWithValues: reqs.dropFirst(consumed).map { ($0.2, ($0.0, $0.1)) })
        while rest.count < 64 - consumed {
            guard let u = q.waitUsed() else { XCTFail("\(64 - consumed - rest.count) requests never completed after restart"); break }
            rest.append(u.head)
            if let (r, b) = byHead[u.head] { XCTAssertNil(completionProblem(b, r, used: u.length)) } else {
                XCTFail("used head \(u.head) after restart is not one of the unconsumed requests")
            }
        }
        XCTAssertEqual(Set(rest).count, rest.count)
        XCTAssertEqual(Set(rest), Set(byHead.keys))
        XCTAssertEqual(try c.frontend.getVringBase(0), 65)
        XCTAssertEqual(q.usedIndex, 65)
        XCTAssertNil(q.popUsed(), "an extra used entry appeared")
        XCTAssertEqual(s.requests(0), 65)
        let image = try readFile(s.image, offset: 0, count: 16 << 20)
        for (r, _, _) in reqs where r.write {
            XCTAssertEqual(Array(image[Int(r.sector) * 512..<Int(r.sector) * 512 + 4096]), r.bytes, "request \(r.id)")
        }
        print("stop/start [\(options)] kickLast=\(kickLast): \(consumed) of 64 consumed before the stop, "
              + "\(base - usedBefore) of them completed after the stop was sent")
    }

    func testStopWithRequestsInFlightThenRestartFromBase() throws {
        try stopAndRestartWithRequestsInFlight(options: "", kickLast: false)
    }

    func testStopWithDirectRequestsInFlightThenRestartFromBase() throws {
        try stopAndRestartWithRequestsInFlight(options: "direct=on", kickLast: true)
    }

    func testStopWithAIORequestsInFlightThenRestartFromBase() throws {
        try stopAndRestartWithRequestsInFlight(options: "direct=on,engine=aio", kickLast: true)
    }

    /// Mixed requests for writer `queue`: 3 in 4 write sectors nobody else writes, 1 in 4 reads the area no one writes.
    private static let readArea = 24576
    private static func mixedRequest(id: Int, queue: Int, length: Int) -> HReq {
        let secs = length / 512
        if id % 4 == 3 {
            let sector = readArea + ((id * 7 + queue * 3) % 256) * secs
            return HReq(id: id, write: false, sector: UInt64(sector), bytes: imageBytes(sector * 512, length))
        }
        // Each queue owns 12288 sectors of write slots; a slot is rewritten only that many requests later (at
        // most 48 are outstanding), so the last write to a slot is what the image must hold.
        let slots = 12288 / secs
        let sector = queue * 12288 + (id % slots) * secs
        return HReq(id: id, write: true, sector: UInt64(sector), bytes: stamped(length, id: id, tag: queue))
    }

    /// Checks, after the drivers are done, that every request was completed exactly once and every write is
    /// in the image at its offset.
    private func verifyDrivers(_ drivers: [RingDriver], image: String, imageSize: Int) throws {
        let bytes = try readFile(image, offset: 0, count: imageSize)
        for d in drivers {
            XCTAssertEqual(d.problems, [], "queue \(d.index)")
            let times = d.timesCompleted
            XCTAssertEqual(times.count, d.submittedCount)
            let wrong = times.enumerated().filter { $0.element != 1 }
            XCTAssertTrue(wrong.isEmpty, "queue \(d.index): requests not completed exactly once (id, times): \(wrong.prefix(10))")
            // The last write to each sector is what the image holds.
            var last: [UInt64: HReq] = [:]
            for r in d.requests where r.write { last[r.sector] = r }
            for r in last.values.sorted(by: { $0.id < $1.id }) {
                let off = Int(r.sector) * 512
                if Array(bytes[off..<off + r.bytes.count]) != r.bytes {
                    XCTFail("queue \(d.index): write \(r.id) (sector \(r.sector)) is not in the image")
                    break
                }
            }
        }
    }

    /// Two queues on two pollers, a driver thread per queue submitting all the time; 20 times both rings are
    /// stopped (GET_VRING_BASE) and restarted at their base with new kick fds, in alternating order so the
    /// queues change pollers every cycle.
    private func stopStartCycles(options: String, cycles: Int = 20) throws {
        pollers = try PollerGroup(count: 2)
        let imageSize = 16 << 20
        let s = try serve(options: "num-queues=2" + (options.isEmpty ? "" : "," + options), imageSize: imageSize)
        let c = try BlkTestClient(socket: s.socket, queueCount: 2, queueSize: 256)
        XCTAssertEqual([startedOn(queue: 0), startedOn(queue: 1)], [[0], [1]])
        let drivers = (0..<2).map { qi in
            RingDriver(queue: c.queues[qi], index: qi, kickFD: c.kicks[qi],
                                     buffers: (0..<48).map { _ in HBufs(c.ram, capacity: 1024) }, limit: 1_000_000,
                                     make: { Self.mixedRequest(id: $0, queue: qi, length: 1024) })
        }
        let jobs = drivers.map { b in Job("ring\(b.index)") { b.run() } }
        defer {
            for b in drivers { b.finish() }
            for j in jobs { _ = j.join() }
        }
        // Indices are 16-bit and wrap; `consumed` counts without wrapping.
        var bases: [UInt16] = [0, 0]
        var consumed = [0, 0]
        var drainedAtStop = 0, leftAvailable = 0
        for cycle in 0..<cycles {
            // Let both drivers make progress on the running rings (the wait is a safety net).
            for b in drivers {
                let target = b.completedCount + 40
                guard eventually(20, { b.completedCount >= target || !b.problems.isEmpty }) else {
                    XCTFail("cycle \(cycle): queue \(b.index) made no progress after its restart")
                    return
                }
            }
            for qi in 0..<2 {
                let q = c.queues[qi]
                let usedBefore = q.usedIndex
                let base = UInt16(truncatingIfNeeded: try c.frontend.getVringBase(UInt32(qi)))
                let submitted = drivers[qi].submittedCount
                XCTAssertEqual(q.usedIndex, base, "cycle \(cycle) queue \(qi): used index after stop")
                consumed[qi] += Int(base &- bases[qi])
                XCTAssertEqual(s.requests(qi), UInt64(consumed[qi]), "cycle \(cycle) queue \(qi): requests started")
                XCTAssertLessThanOrEqual(consumed[qi], submitted, "cycle \(cycle) queue \(qi)")
                if base != usedBefore { drainedAtStop += 1 }
                leftAvailable += submitted - consumed[qi]
                bases[qi] = base
            }
            XCTAssertEqual(queueCounts(), [0, 0])
            // Restart in alternating order: the first restarted lands on poller 0, the second on poller 1.
            let order = cycle % 2 == 0 ? [1, 0] : [0, 1]
            for (n, qi) in order.enumerated() {
                try drivers[qi].restart {
                    let (k, call) = try c.frontend.startVring(UInt32(qi), c.queues[qi], base: UInt32(bases[qi]))
                    fdsToClose += [k, call]
                    kick(k)
                    return k
                }
                XCTAssertEqual(startedOn(queue: qi).last, n, "cycle \(cycle): queue \(qi) restarted on the wrong poller")
            }
            XCTAssertEqual(queueCounts(), [1, 1])
        }
        for b in drivers { b.finish() }
        for (i, j) in jobs.enumerated() { XCTAssertTrue(j.join(), "driver \(i) did not finish") }
        for qi in 0..<2 {
            let d = drivers[qi]
            let base = UInt16(truncatingIfNeeded: try c.frontend.getVringBase(UInt32(qi)))
            XCTAssertEqual(base, UInt16(truncatingIfNeeded: d.submittedCount), "queue \(qi): final base")
            XCTAssertEqual(d.completedCount, d.submittedCount, "queue \(qi)")
            XCTAssertEqual(c.queues[qi].usedIndex, base)
            XCTAssertEqual(s.requests(qi), UInt64(d.submittedCount))
            // Each queue ran on both pollers.
            XCTAssertEqual(Set(startedOn(queue: qi)), [0, 1])
        }
        try verifyDrivers(drivers, image: s.image, imageSize: imageSize)
        print("stop/start cycles [\(options)]: \(drivers.map { $0.submittedCount }) requests, \(cycles) cycles, "
              + "\(drainedAtStop) stops drained requests in flight, \(leftAvailable) requests left available at stops")
    }

    func testStopStartCyclesWhileDriversSubmit() throws {
        try stopStartCycles(options: "")
    }

    func testStopStartCyclesWhileDriversSubmitDirect() throws {
        try stopStartCycles(options: "direct=on")
    }

    // MARK: memory table changes under I/O

    /// ADD_MEM_REG of further regions while both queues (on two pollers) run I/O; after each one, requests
    /// use buffers in the new region too.
    func testAddMemRegWhileIORuns() throws {
        pollers = try PollerGroup(count: 2)
        let imageSize = 16 << 20
        let s = try serve(options: "num-queues=2", imageSize: imageSize)
        let c = try BlkTestClient(socket: s.socket, queueCount: 2, queueSize: 256, ramSize: 8 << 20, useAddMemReg: true)
        let extra = try (1...4).map { k in
            try GuestRAM(size: 2 << 20, guestAddress: c.ram.guestAddress + (16 << 20) * UInt64(k), name: "extra\(k)")
        }
        // Buffers in every region, made before the drivers start (the RAM allocator is not thread-safe).
        let pools: [[[HBufs]]] = (0..<2).map { _ in
            [(0..<16).map { _ in HBufs(c.ram, capacity: 1024, pool: 0) }]
                + extra.enumerated().map { k, ram in (0..<8).map { _ in HBufs(ram, capacity: 1024, pool: k + 1) } }
        }
        let drivers = (0..<2).map { qi in
            RingDriver(queue: c.queues[qi], index: qi, kickFD: c.kicks[qi], buffers: pools[qi][0],
                                     limit: 1_000_000, make: { Self.mixedRequest(id: $0, queue: qi, length: 1024) })
        }
        let jobs = drivers.map { b in Job("ring\(b.index)") { b.run() } }
        defer {
            for b in drivers { b.finish() }
            for j in jobs { _ = j.join() }
        }
        for (k, ram) in extra.enumerated() {
            for b in drivers {
                let target = b.completedCount + 50
                XCTAssertTrue(eventually(20, { b.completedCount >= target || !b.problems.isEmpty }), "queue \(b.index) stalled")
            }
            XCTAssertEqual(try c.frontend.addMemReg(ram), 0, "ADD_MEM_REG \(k + 1)")
            for b in drivers { b.addBuffers(pools[b.index][k + 1]) }
            for b in drivers {
                XCTAssertTrue(eventually(20, { b.completed(pool: k + 1) >= 16 || !b.problems.isEmpty }),
                              "queue \(b.index): buffers in region \(k + 1) never completed")
            }
        }
        for b in drivers { b.finish() }
        for (i, j) in jobs.enumerated() { XCTAssertTrue(j.join(), "driver \(i) did not finish") }
        XCTAssertTrue(logs.contains("memory table: 5 regions"), "\(logs.all.suffix(20))")
        for qi in 0..<2 {
            XCTAssertEqual(try c.frontend.getVringBase(UInt32(qi)), UInt32(UInt16(truncatingIfNeeded: drivers[qi].submittedCount)))
            for k in 0...4 { XCTAssertGreaterThan(drivers[qi].completed(pool: k), 0, "queue \(qi) region \(k)") }
        }
        try verifyDrivers(drivers, image: s.image, imageSize: imageSize)
    }

    /// SET_MEM_TABLE re-sent (same RAM, so the backend maps it anew and drops the old mappings) while a driver
    /// keeps requests in flight: every request must still complete OK with the right data.
    private func setMemTableWhileIORuns(options: String, tables: Int = 40) throws {
        let imageSize = 16 << 20
        let s = try serve(options: options, imageSize: imageSize)
        let c = try BlkTestClient(socket: s.socket, queueSize: 256, ramSize: 8 << 20)
        let d = RingDriver(queue: c.queues[0], index: 0, kickFD: c.kicks[0],
                           buffers: (0..<48).map { _ in HBufs(c.ram, capacity: 4096) }, limit: 1_000_000,
                           make: { Self.mixedRequest(id: $0, queue: 0, length: 4096) })
        let job = Job("ring0") { d.run() }
        defer {
            d.finish()
            _ = job.join()
        }
        for t in 0..<tables {
            let target = d.completedCount + 20
            guard eventually(20, { d.completedCount >= target || !d.problems.isEmpty }) else {
                XCTFail("table \(t): no progress")
                return
            }
            XCTAssertEqual(try c.frontend.command(.setMemTable, payload: memTablePayload(c.frontend, [c.ram]), fds: [c.ram.fd]), 0)
            if !d.problems.isEmpty { break }
        }
        d.finish()
        XCTAssertTrue(job.join(), "driver did not finish")
        XCTAssertEqual(d.problems.prefix(10), [], "\(d.problems.count) problems")
        // The avail index is 16 bits on the wire: it wraps after 65536 requests.
        XCTAssertEqual(try c.frontend.getVringBase(0), UInt32(UInt16(truncatingIfNeeded: d.submittedCount)))
        try verifyDrivers([d], image: s.image, imageSize: imageSize)
    }

    private func memTablePayload(_ fe: VhostUserFrontend, _ regions: [GuestRAM]) -> [UInt8] {
        var p: [UInt8] = []
        p.le(UInt32(regions.count))
        p.le(UInt32(0))
        for r in regions { p += fe.regionPayload(r) }
        return p
    }

    func testSetMemTableWhileIORuns() throws {
        try setMemTableWhileIORuns(options: "")
    }

    func testSetMemTableWhileDirectIORuns() throws {
        try setMemTableWhileIORuns(options: "direct=on")
    }

    // MARK: lost wakeup through an export

    /// One request at a time through a vhost-user-blk export; the driver kicks only when the device asks and
    /// waits for the completion (interrupt or, every other time, by spinning on the used index). A poller that
    /// sleeps with a request pending hangs an iteration; the per-iteration timeout names it.
    private func lostWakeupThroughExport(pollMicroseconds: UInt64, eventIdx: Bool, iterations: Int = 5000) throws {
        pollers = try PollerGroup(count: 1, pollMicroseconds: pollMicroseconds)
        let s = try serve(imageSize: 4 << 20)
        let features = eventIdx ? nil : BlkDevice.features & ~VirtioFeature.ringEventIdx
        let c = try BlkTestClient(socket: s.socket, queueSize: 128, features: features)
        XCTAssertEqual(c.ackedFeatures & VirtioFeature.ringEventIdx != 0, eventIdx)
        let q = c.queues[0]
        XCTAssertEqual(q.eventIdx, eventIdx)
        let bufs = [HBufs(c.ram, capacity: 512), HBufs(c.ram, capacity: 512)]
        let companionBufs = HBufs(c.ram, capacity: 512)
        var kicked = 0, suppressed = 0, companions = 0
        var rng = SystemRandomNumberGenerator()
        // Even: write a sector; odd: read it back.
        func request(_ i: Int) -> HReq {
            let sector = UInt64(1024 + (i / 2) % 4096)
            return i % 2 == 0 ? HReq(id: i, write: true, sector: sector, bytes: stamped(512, id: i, tag: 5))
                              : HReq(id: i, write: false, sector: sector, bytes: stamped(512, id: i - 1, tag: 5))
        }
        /// Fills the buffers ahead of time, so adding the chain right after a completion is quick (the driver
        /// then races the poller going back to sleep).
        func prepare(_ b: HBufs, _ r: HReq) -> [DriverVirtqueue.Buffer] {
            b.ram.write(b.header, requestHeader(type: r.write ? BlkType.out : BlkType.in, sector: r.sector))
            b.ram.write(b.status, [0xff])
            if r.write { b.ram.write(b.data, r.bytes) } else { b.ram.fill(b.data, r.bytes.count, byte: 0xee) }
            return [.init(gpa: b.header, length: 16, writable: false),
                    .init(gpa: b.data, length: UInt32(r.bytes.count), writable: !r.write),
                    .init(gpa: b.status, length: 1, writable: true)]
        }
        /// Adds a chain and kicks only if the device asks (virtqueue_kick_prepare).
        func addAndMaybeKick(_ chain: [DriverVirtqueue.Buffer]) -> (UInt16, Bool) {
            let old = q.availIndex
            let head = q.add(chain)
            let k = q.needsKick(since: old)
            if k { kick(c.kicks[0]); kicked += 1 } else { suppressed += 1 }
            return (head, k)
        }
        var lastUsed: UInt16 = 0   // the driver's last_used_idx
        var lostInterrupts = 0
        var next = request(0)
        var chain = prepare(bufs[0], next)
        for i in 0..<iterations {
            let r = next, b = bufs[i % 2]
            // EVENT_IDX: interrupt me for the next used entry (virtqueue_enable_cb).
            if eventIdx { q.setUsedEvent(lastUsed) }
            if Int.random(in: 0..<4, using: &rng) == 0 { usleep(UInt32.random(in: 1..<40, using: &rng)) }
            let (head, didKick) = addAndMaybeKick(chain)
            var expect: [UInt16: (HReq, HBufs)] = [head: (r, b)]
            // On two iterations in three a second request follows while the poller is likely working on the
            // first (for a ring without EVENT_IDX, as soon as the device has set NO_NOTIFY): its kick is then
            // suppressed, and only the poller's own re-check after re-arming notifications finds it.
            if i % 3 != 0 {
                let sector = 6000 + (i % 64)
                let cr = HReq(id: -i, write: false, sector: UInt64(sector), bytes: imageBytes(sector * 512, 512))
                let cc = prepare(companionBufs, cr)
                let until = nowSeconds() + (eventIdx ? Double.random(in: 0..<40e-6, using: &rng) : 200e-6)
                while nowSeconds() < until {
                    if !eventIdx && q.usedFlags & 1 != 0 { break }
                    vdv_cpu_relax()
                }
                let (ch, _) = addAndMaybeKick(cc)
                expect[ch] = (cr, companionBufs)
                companions += 1
            }
            if i + 1 < iterations {
                next = request(i + 1)
                chain = prepare(bufs[(i + 1) % 2], next)
            }
            // Wait like a driver: spin on the used index, or (every other iteration) sleep on the call eventfd after
            // re-arming the interrupt and looking once more (virtqueue_enable_cb + virtqueue_poll).
            let spin = i % 2 == 1
            let deadline = nowSeconds() + 10
            var timedOutWithEntry = false
            while !expect.isEmpty {
                if let u = q.popUsed() {
                    lastUsed &+= 1
                    guard let (er, eb) = expect.removeValue(forKey: u.head) else {
                        XCTFail("iteration \(i): unexpected used head \(u.head)")
                        return
                    }
                    if let p = completionProblem(eb, er, used: u.length) {
                        XCTFail("iteration \(i): \(p)")
                        return
                    }
                    continue
                }
                if nowSeconds() > deadline { break }
                if spin {
                    vdv_cpu_relax()
                    continue
                }
                if eventIdx { q.setUsedEvent(lastUsed) }
                vdv_fence_seq_cst()
                if q.usedIndex != lastUsed { continue }
                var p = pollfd(fd: c.calls[0], events: Int16(POLLIN), revents: 0)
                let n = poll(&p, 1, Int32(max(1, (deadline - nowSeconds()) * 1000)))
                _ = drainEventFD(c.calls[0])
                if n == 0 && q.usedIndex != lastUsed { timedOutWithEntry = true }
            }
            if timedOutWithEntry { lostInterrupts += 1 }
            guard expect.isEmpty else {
                XCTFail("iteration \(i): \(expect.count) request(s) never completed (first kicked: \(didKick), avail \(q.availIndex), "
                        + "used \(q.usedIndex), used flags \(q.usedFlags), avail_event \(q.availEvent), started \(s.requests(0))) — "
                        + "the poller slept with a request pending")
                return
            }
        }
        XCTAssertEqual(lostInterrupts, 0, "completions published without the interrupt the driver asked for")
        let total = iterations + companions
        XCTAssertEqual(try c.frontend.getVringBase(0), UInt32(UInt16(truncatingIfNeeded: total)))
        XCTAssertEqual(s.requests(0), UInt64(total))
        print("export lost-wakeup poll-us=\(pollMicroseconds) event-idx=\(eventIdx): \(total) requests, "
              + "\(kicked) kicked, \(suppressed) suppressed by the device")
    }

    func testNoLostWakeupPollUs0WithEventIdx() throws {
        try lostWakeupThroughExport(pollMicroseconds: 0, eventIdx: true)
    }

    func testNoLostWakeupPollUs0WithoutEventIdx() throws {
        try lostWakeupThroughExport(pollMicroseconds: 0, eventIdx: false)
    }

    func testNoLostWakeupPollUs50WithEventIdx() throws {
        try lostWakeupThroughExport(pollMicroseconds: 50, eventIdx: true)
    }

    func testNoLostWakeupPollUs50WithoutEventIdx() throws {
        try lostWakeupThroughExport(pollMicroseconds: 50, eventIdx: false)
    }

    // MARK: two exports, one poller

    func testTwoExportsOnOnePollerServeTwoClientThreadsAtOnce() throws {
        pollers = try PollerGroup(count: 1)
        let imageSize = 8 << 20
        let served = [try serve(id: "diskA", imageSize: imageSize), try serve(id: "diskB", imageSize: imageSize)]
        let clients = try served.map { try BlkTestClient(socket: $0.socket, queueSize: 128) }
        XCTAssertEqual(startedOn(queue: 0, export: "diskA"), [0])
        XCTAssertEqual(startedOn(queue: 0, export: "diskB"), [0])
        XCTAssertEqual(queueCounts(), [2])
        let rounds = 300
        let meet = Rendezvous(parties: 2)
        let bufs = clients.map { c in (0..<4).map { _ in HBufs(c.ram, capacity: 4096) } }
        let problemLock = Lock()
        var problems: [String] = []
        var written: [[HReq]] = [[], []]
        let jobs = (0..<2).map { e in
            Job("export\(e)") {
                let c = clients[e], q = c.queues[0]
                var mine: [HReq] = []
                var id = 0
                for round in 0..<rounds {
                    // Two writes of this round, two reads of the previous round's writes (or of the image).
                    var batch: [HReq] = []
                    for k in 0..<2 {
                        batch.append(HReq(id: id, write: true, sector: UInt64(round * 16 + k * 8),
                                          bytes: stamped(4096, id: id, tag: 100 + e)))
                        id += 1
                    }
                    for k in 0..<2 {
                        if round > 0 {
                            let prev = mine[mine.count - 2 + k]
                            batch.append(HReq(id: id, write: false, sector: prev.sector, bytes: prev.bytes))
                        } else {
                            let sector = 8000 + k * 8
                            batch.append(HReq(id: id, write: false, sector: UInt64(sector), bytes: imageBytes(sector * 512, 4096)))
                        }
                        id += 1
                    }
                    let old = q.availIndex
                    var heads: [UInt16: Int] = [:]
                    for (k, r) in batch.enumerated() { heads[post(q, bufs[e][k], r)] = k }
                    if q.needsKick(since: old) { kick(c.kicks[0]) }
                    // Both threads have requests outstanding on their export before either waits.
                    meet.arrive()
                    for _ in 0..<4 {
                        guard let u = q.waitUsed(timeout: 10) else {
                            problemLock.withLock { problems.append("export \(e) round \(round): request never completed") }
                            break
                        }
                        guard let k = heads.removeValue(forKey: u.head) else {
                            problemLock.withLock { problems.append("export \(e) round \(round): unexpected head \(u.head)") }
                            continue
                        }
                        if let p = completionProblem(bufs[e][k], batch[k], used: u.length) {
                            problemLock.withLock { problems.append("export \(e) round \(round): \(p)") }
                        }
                    }
                    mine += batch.filter(\.write)
                }
                problemLock.withLock { written[e] = mine }
            }
        }
        for (i, j) in jobs.enumerated() { XCTAssertTrue(j.join(timeout: 120), "client thread \(i) did not finish") }
        XCTAssertEqual(problemLock.withLock { problems }, [])
        for e in 0..<2 {
            XCTAssertEqual(served[e].requests(0), UInt64(rounds * 4))
            XCTAssertEqual(Int(try clients[e].frontend.getVringBase(0)), rounds * 4)
            let image = try readFile(served[e].image, offset: 0, count: imageSize)
            let ws = problemLock.withLock { written[e] }
            XCTAssertEqual(ws.count, rounds * 2)
            for r in ws {
                let off = Int(r.sector) * 512
                if Array(image[off..<off + 4096]) != r.bytes { XCTFail("export \(e): write \(r.id) not in its image"); break }
            }
            // Nothing past the written area changed (in particular nothing of the other export's data).
            let end = rounds * 16 * 512
            XCTAssertTrue(Array(image[end..<imageSize]) == imageBytes(end, imageSize - end), "export \(e): image changed past the writes")
        }
    }
}
