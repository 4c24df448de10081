#if canImport(Glibc)
import Glibc
#endif
import Blk
import CVdevd
import Dispatch
import Exports
import Foundation
import VhostUserTestSupport
import Virtio
import XCTest

/// A frontend or guest that breaks the rules hurts only its own connection or queue.
final class HostileFrontendTests: ExportTestCase {
    func header(_ request: UInt32, flags: UInt32 = 1, size: UInt32) -> [UInt8] {
        var h: [UInt8] = []
        h.le(request)
        h.le(flags)
        h.le(size)
        return h
    }

    /// After a frontend was thrown out, the export takes the next one and serves it.
    func assertNextFrontendIsServed(_ s: Served, connections: Int, file: StaticString = #filePath, line: UInt = #line) throws {
        let c = try BlkTestClient(socket: s.socket)
        XCTAssertEqual(try c.read(sector: 3, count: 512).1, imageBytes(3 * 512, 512), file: file, line: line)
        XCTAssertEqual(s.export.stats["connections"] as? Int, connections, file: file, line: line)
    }

    // MARK: bad messages close the connection

    func testUnknownRequestClosesTheConnection() throws {
        let s = try serve()
        let fe = try ackingFrontend(s.socket)
        try fe.send(99, flags: 1 | VhostUserFrontend.needReply)
        XCTAssertTrue(fe.backendClosed(), "backend kept the connection after request 99")
        XCTAssertThrowsError(try fe.receive())
        XCTAssertTrue(logs.contains("unknown request 99"), "\(logs.all)")
        try assertNextFrontendIsServed(s, connections: 2)
    }

    func testUnknownRequestWithoutReplyAckClosesTheConnection() throws {
        let s = try serve()
        let fe = try VhostUserFrontend(path: s.socket)
        try fe.send(0x7777)
        XCTAssertTrue(fe.backendClosed())
        try assertNextFrontendIsServed(s, connections: 2)
    }

    func testPayloadLargerThan4096ClosesTheConnection() throws {
        let s = try serve()
        let fe = try VhostUserFrontend(path: s.socket)
        XCTAssertNotEqual(try fe.getU64(.getFeatures), 0)
        // Only the header: the backend must refuse on the size alone, without reading (or allocating) 64 KiB.
        try fe.sendRaw(header(2, size: 65536))
        XCTAssertTrue(fe.backendClosed())
        XCTAssertTrue(logs.contains("payload of 65536 bytes"), "\(logs.all)")
        try assertNextFrontendIsServed(s, connections: 2)
    }

    func testPayloadOf4097ClosesTheConnection() throws {
        let s = try serve()
        let fe = try VhostUserFrontend(path: s.socket)
        try fe.sendRaw(header(24, size: 4097))
        XCTAssertTrue(fe.backendClosed())
        try assertNextFrontendIsServed(s, connections: 2)
    }

    func testWrongVersionClosesTheConnection() throws {
        let s = try serve()
        let fe = try VhostUserFrontend(path: s.socket)
        try fe.sendRaw(header(1, flags: 2, size: 0))
        XCTAssertTrue(fe.backendClosed())
        try assertNextFrontendIsServed(s, connections: 2)
    }

    func testShortPayloadClosesTheConnection() throws {
        let s = try serve()
        let fe = try ackingFrontend(s.socket)
        // SET_FEATURES carries a u64; four bytes is a broken message, not a refusal.
        try fe.send(2, payload: [1, 0, 0, 0], flags: 1 | VhostUserFrontend.needReply)
        XCTAssertTrue(fe.backendClosed())
        try assertNextFrontendIsServed(s, connections: 2)
    }

    func testMemTableWithMissingFdClosesTheConnection() throws {
        let s = try serve()
        let fe = try ackingFrontend(s.socket)
        let a = try GuestRAM(size: 1 << 20, guestAddress: 0)
        let b = try GuestRAM(size: 1 << 20, guestAddress: 1 << 20)
        var p: [UInt8] = []
        p.le(UInt32(2))
        p.le(UInt32(0))
        p += fe.regionPayload(a) + fe.regionPayload(b)
        try fe.send(5, payload: p, fds: [a.fd], flags: 1 | VhostUserFrontend.needReply)
        XCTAssertTrue(fe.backendClosed())
        try assertNextFrontendIsServed(s, connections: 2)
    }

    // MARK: well-formed requests that are refused keep the connection

    func testVringIndexOutOfRangeIsRefusedWithAck() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        let fe = c.frontend
        for i: UInt32 in [1, 200] {
            XCTAssertNotEqual(try fe.command(.setVringNum, payload: fe.vringState(i, 128)), 0, "SET_VRING_NUM \(i)")
            XCTAssertNotEqual(try fe.command(.setVringBase, payload: fe.vringState(i, 0)), 0, "SET_VRING_BASE \(i)")
            XCTAssertNotEqual(try fe.command(.setVringEnable, payload: fe.vringState(i, 1)), 0, "SET_VRING_ENABLE \(i)")
            var a: [UInt8] = []
            a.le(i)
            a.le(UInt32(0))
            a += [UInt8](repeating: 0, count: 32)
            XCTAssertNotEqual(try fe.command(.setVringAddr, payload: a), 0, "SET_VRING_ADDR \(i)")
            let efd = vdv_eventfd(0, 1)
            defer { close(efd) }
            XCTAssertNotEqual(try fe.command(.setVringCall, payload: fe.u64Payload(UInt64(i)), fds: [efd]), 0)
            XCTAssertNotEqual(try fe.command(.setVringKick, payload: fe.u64Payload(UInt64(i)), fds: [efd]), 0)
        }
        // Same connection, same ring: still serving.
        XCTAssertEqual(try c.read(sector: 0, count: 512).1, imageBytes(0, 512))
        XCTAssertEqual(s.export.stats["connections"] as? Int, 1)
    }

    func testBadVringSizesAreRefused() throws {
        let s = try serve(options: "queue-size=64")
        let fe = try ackingFrontend(s.socket)
        XCTAssertNotEqual(try fe.command(.setVringNum, payload: fe.vringState(0, 0)), 0)
        XCTAssertNotEqual(try fe.command(.setVringNum, payload: fe.vringState(0, 48)), 0)
        XCTAssertNotEqual(try fe.command(.setVringNum, payload: fe.vringState(0, 128)), 0)
        XCTAssertEqual(try fe.command(.setVringNum, payload: fe.vringState(0, 64)), 0)
        XCTAssertEqual(try fe.command(.setVringNum, payload: fe.vringState(0, 16)), 0)
    }

    func testRingCannotBeResizedWhileRunning() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        let fe = c.frontend
        XCTAssertNotEqual(try fe.command(.setVringNum, payload: fe.vringState(0, 64)), 0)
        XCTAssertNotEqual(try fe.command(.setVringBase, payload: fe.vringState(0, 7)), 0)
        XCTAssertEqual(try c.read(sector: 0, count: 512).0, Status.ok)
        XCTAssertEqual(try fe.getVringBase(0), 1)
    }

    func testMessagesNeedingUnofferedFeaturesAreRefused() throws {
        let s = try serve()
        let fe = try ackingFrontend(s.socket)
        let efd = vdv_eventfd(0, 1)
        defer { close(efd) }
        XCTAssertNotEqual(try fe.command(.setLogFD, fds: [efd]), 0)
        try fe.send(21, payload: [], fds: [efd], flags: 1 | VhostUserFrontend.needReply)
        let ack = try fe.receive()  // SET_BACKEND_REQ_FD
        XCTAssertEqual(ack.request, 21)
        XCTAssertNotEqual(ack.payload.u64(0), 0)
        XCTAssertEqual(try fe.getU64(.getQueueNum), 1)
    }

    // MARK: guests that break ring rules

    /// Writes one descriptor at a guest address (for indirect tables).
    func putDescriptor(_ ram: GuestRAM, at gpa: UInt64, addr: UInt64, len: UInt32, flags: UInt16, next: UInt16) {
        let p = ram.pointer(gpa)
        p.storeBytes(of: addr.littleEndian, toByteOffset: 0, as: UInt64.self)
        p.storeBytes(of: len.littleEndian, toByteOffset: 8, as: UInt32.self)
        p.storeBytes(of: flags.littleEndian, toByteOffset: 12, as: UInt16.self)
        p.storeBytes(of: next.littleEndian, toByteOffset: 14, as: UInt16.self)
    }

    struct Violation {
        let name: String
        let logged: String
        let apply: (BlkTestClient, DriverVirtqueue) -> Void
    }

    var violations: [Violation] {
        let next: UInt16 = 1, write: UInt16 = 2, indirect: UInt16 = 4
        return [
            Violation(name: "descriptor loop", logged: "loops") { c, q in
                let hdr = c.ram.allocate(16)
                c.ram.write(hdr, requestHeader(type: BlkType.in, sector: 0))
                q.writeDescriptor(0, addr: hdr, len: 16, flags: next, next: 0)
                q.publish(0)
            },
            Violation(name: "two-descriptor loop", logged: "loops") { c, q in
                let hdr = c.ram.allocate(16)
                q.writeDescriptor(0, addr: hdr, len: 16, flags: next, next: 1)
                q.writeDescriptor(1, addr: hdr, len: 16, flags: next, next: 0)
                q.publish(0)
            },
            Violation(name: "next out of range", logged: "descriptor index 500 out of range") { c, q in
                q.writeDescriptor(0, addr: c.ram.allocate(16), len: 16, flags: next, next: 500)
                q.publish(0)
            },
            Violation(name: "head out of range", logged: "avail ring head 500 out of range") { _, q in
                q.publish(500)
            },
            Violation(name: "avail index too far", logged: "avail index ran \(128 + 1) entries ahead") { _, q in
                precondition(q.size == 128)
                q.setAvailIndex(q.usedIndex &+ q.size &+ 1)
            },
            Violation(name: "readable after writable", logged: "device-readable descriptor after") { c, q in
                let b = c.ram.allocate(512)
                q.writeDescriptor(0, addr: b, len: 16, flags: write | next, next: 1)
                q.writeDescriptor(1, addr: b, len: 16, flags: 0, next: 0)
                q.publish(0)
            },
            Violation(name: "indirect with next", logged: "indirect descriptor with NEXT") { c, q in
                let t = c.ram.allocate(32, alignment: 16)
                q.writeDescriptor(0, addr: t, len: 32, flags: indirect | next, next: 1)
                q.publish(0)
            },
            Violation(name: "nested indirect", logged: "nested indirect") { c, q in
                let t = c.ram.allocate(32, alignment: 16)
                let inner = c.ram.allocate(16, alignment: 16)
                self.putDescriptor(c.ram, at: t, addr: inner, len: 16, flags: indirect, next: 0)
                q.writeDescriptor(0, addr: t, len: 16, flags: indirect, next: 0)
                q.publish(0)
            },
            Violation(name: "indirect table length", logged: "indirect table length 20") { c, q in
                q.writeDescriptor(0, addr: c.ram.allocate(32, alignment: 16), len: 20, flags: indirect, next: 0)
                q.publish(0)
            },
            Violation(name: "indirect loop", logged: "loops") { c, q in
                let t = c.ram.allocate(32, alignment: 16)
                let hdr = c.ram.allocate(16)
                self.putDescriptor(c.ram, at: t, addr: hdr, len: 16, flags: next, next: 1)
                self.putDescriptor(c.ram, at: t + 16, addr: hdr, len: 16, flags: next, next: 0)
                q.writeDescriptor(0, addr: t, len: 32, flags: indirect, next: 0)
                q.publish(0)
            },
        ]
    }

    /// Each violation on queue 1 stops queue 1 only: the error fd fires, the export logs it, queue 0 of the same
    /// export and another export on the same poller keep serving.
    func testRingViolationsStopOnlyTheirQueue() throws {
        let group = try pollerGroup()
        XCTAssertEqual(group.pollers.count, 1)
        let bystander = try serve(id: "bystander")
        let cb = try BlkTestClient(socket: bystander.socket)
        for (n, v) in violations.enumerated() {
            let id = "v\(n)"
            let s = try serve(id: id, options: "num-queues=2")
            let c = try BlkTestClient(socket: s.socket, queueCount: 2)
            XCTAssertEqual(try c.read(sector: 0, count: 512, queue: 1).0, Status.ok, v.name)
            let (ring, err) = try armErrorFD(c, 1)
            v.apply(c, c.queues[1])
            kick(ring.kickFD)
            XCTAssertEqual(waitEventFD(err), 1, "\(v.name): SET_VRING_ERR fd never signalled")
            XCTAssertTrue(logs.all.contains { $0.hasPrefix("error") && $0.contains("export=\(id)")
                              && $0.contains("queue 1 stopped") && $0.contains(v.logged) },
                          "\(v.name): \(logs.all.filter { $0.contains("export=\(id)") })")
            // The other queue of the same export.
            let data = payload(1024, seed: UInt8(n))
            XCTAssertEqual(try c.write(sector: UInt64(64 * n), data: data, queue: 0), Status.ok, v.name)
            XCTAssertEqual(try readFile(s.image, offset: 64 * n * 512, count: 1024), data, v.name)
            XCTAssertEqual(try c.read(sector: UInt64(64 * n), count: 1024, queue: 0).1, data, v.name)
            // Another export on the same poller.
            XCTAssertEqual(try cb.read(sector: UInt64(n), count: 512).1, imageBytes(n * 512, 512), v.name)
            // The broken queue did not complete anything after its one good request.
            XCTAssertEqual(c.queues[1].usedIndex, 1, v.name)
            XCTAssertEqual(s.requests(0), 2, v.name)
            // The frontend can still stop the broken ring; the connection is intact.
            _ = try c.frontend.getVringBase(1)
            XCTAssertEqual(try c.frontend.getU64(.getQueueNum), 2)
        }
        XCTAssertEqual(bystander.requests(0), UInt64(violations.count))
        XCTAssertEqual(bystander.counter(.errors), 0)
    }

    /// A queue stopped by a guest error should show in the export's counters, not only in the log.
    func testRingViolationIsCountedAsAnError() throws {
        let s = try serve(options: "num-queues=2")
        let c = try BlkTestClient(socket: s.socket, queueCount: 2)
        let (ring, err) = try armErrorFD(c, 1)
        violations[0].apply(c, c.queues[1])
        kick(ring.kickFD)
        XCTAssertEqual(waitEventFD(err), 1)
        if s.counter(.errors, 1) == 0 {
            return XCTFail("a queue stopped by a guest ring violation is not counted in QueueStats.errors "
                          + "(queue 1 stopped on a descriptor loop, errors=0): BlkQueue.start() rethrows readChain "
                          + "errors without stats.add(.errors) (Sources/Blk/BlkQueue.swift:93-96), popHead errors "
                          + "propagate from process() likewise, and the onError closure in VhostUserSession."
                          + "startVringIfReady (Sources/Exports/VhostUser/VhostUserSession.swift:346-349) only logs "
                          + "and signals the err fd; yet a chain without a status byte does count (finishMalformed)")
        }
        XCTAssertGreaterThanOrEqual(s.counter(.errors, 1), 1)
    }

    // MARK: a frontend that stalls

    /// Bytes the peer has not read yet from our side of a Unix stream socket (SIOCOUTQ).
    func unreadByPeer(_ fd: Int32) -> Int32 {
        var n: Int32 = 0
        _ = withUnsafeMutablePointer(to: &n) { ioctl(fd, UInt(0x5411), $0) }
        return n
    }

    func testStopIsNotBlockedByAFrontendStalledMidMessage() throws {
        let s = try serve()
        let fe = try VhostUserFrontend(path: s.socket)
        XCTAssertNotEqual(try fe.getU64(.getFeatures), 0)
        // A SET_FEATURES header announcing 8 payload bytes that never come.
        try fe.sendRaw(header(2, size: 8))
        XCTAssertTrue(eventually { self.unreadByPeer(fe.fd) == 0 }, "backend never read the header")
        let done = DispatchSemaphore(value: 0)
        let export = s.export
        exports.removeAll()
        Thread.detachNewThread {
            export.stop()
            done.signal()
        }
        if done.wait(timeout: .now() + 5) == .timedOut {
            fe.disconnect()  // unblocks the export so the test can clean up
            _ = done.wait(timeout: .now() + 10)
            return XCTFail("VhostUserExport.stop() (and so SIGTERM) hangs while a frontend is stalled mid-message: "
                          + "VhostUserConnection.readFully (Sources/Exports/VhostUser/VhostUserConnection.swift:69-72, "
                          + "called at :56 and :65) blocks in read() without polling stopFD; stop() returned only "
                          + "after the frontend closed its socket")
        }
        XCTAssertNil(fileStat(s.socket))
        XCTAssertTrue(fe.backendClosed())
    }
}
