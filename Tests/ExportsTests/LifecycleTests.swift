#if canImport(Glibc)
import Glibc
#endif
import Blk
import CVdevd
import Exports
import VhostUserTestSupport
import Virtio
import XCTest

/// Ring stop/start, reconnects, device reset and the socket file (vhost-user.rst "Ring states", "Reconnect").
final class LifecycleTests: ExportTestCase {
    func testGetVringBaseReturnsConsumedCountAndTheRingRestartsFromIt() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        let data = payload(2048, seed: 60)
        XCTAssertEqual(try c.write(sector: 0, data: data), Status.ok)
        for i in 0..<4 { XCTAssertEqual(try c.read(sector: UInt64(i), count: 512).0, Status.ok) }
        XCTAssertEqual(try c.frontend.getVringBase(0), 5)
        XCTAssertEqual(s.requests(0), 5)

        // Restart where it stopped, with new kick and call fds, as QEMU does after a stop.
        let (kick2, call2) = try c.frontend.startVring(0, c.queues[0], base: 5)
        defer { close(kick2); close(call2) }
        let ring = Ring(ram: c.ram, queue: c.queues[0], kickFD: kick2)
        let r = try rawRequest(ring, type: BlkType.in, sector: 0, inLengths: [2048])
        XCTAssertEqual(r.status, Status.ok)
        XCTAssertEqual(r.data, data)
        let w = try rawRequest(ring, type: BlkType.out, sector: 100, out: [payload(512, seed: 61)])
        XCTAssertEqual(w.status, Status.ok)
        XCTAssertEqual(try readFile(s.image, offset: 100 * 512, count: 512), payload(512, seed: 61))
        XCTAssertEqual(try c.frontend.getVringBase(0), 7)
        XCTAssertEqual(s.requests(0), 7)
    }

    /// QEMU 7.2 stops a device (live migration, guest reset) with SET_STATUS 0 and only then asks each ring for
    /// its base, which the migration stream carries to the destination: the base must survive the status change.
    func testStatusZeroStopsTheRingsAndKeepsTheirBases() throws {
        let s = try serve(options: "num-queues=2")
        let c = try BlkTestClient(socket: s.socket, queueCount: 2)
        for i in 0..<3 { XCTAssertEqual(try c.read(sector: UInt64(i), count: 512).0, Status.ok) }
        XCTAssertEqual(try c.read(sector: 0, count: 512, queue: 1).0, Status.ok)
        XCTAssertEqual(try c.frontend.command(.setStatus, payload: c.frontend.u64Payload(0x0f)), 0)
        XCTAssertEqual(try c.frontend.command(.setStatus, payload: c.frontend.u64Payload(0)), 0)
        XCTAssertEqual(try c.frontend.getVringBase(0), 3)
        XCTAssertEqual(try c.frontend.getVringBase(1), 1)
    }

    func testGetVringBaseOfANeverStartedRingIsItsBase() throws {
        let s = try serve(options: "num-queues=2")
        let c = try BlkTestClient(socket: s.socket, queueCount: 1)
        let fe = c.frontend
        XCTAssertEqual(try fe.command(.setVringBase, payload: fe.vringState(1, 42)), 0)
        XCTAssertEqual(try fe.getVringBase(1), 42)
    }

    func testDisableAndEnableARing() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        XCTAssertEqual(try c.read(sector: 0, count: 512).0, Status.ok)
        XCTAssertEqual(try c.frontend.command(.setVringEnable, payload: c.frontend.vringState(0, 0)), 0)
        // Made available while the ring is disabled; served once it is enabled again.
        let sub = submitRaw(Ring(c), header: requestHeader(type: BlkType.in, sector: 1), inLengths: [512])
        XCTAssertEqual(try c.frontend.command(.setVringEnable, payload: c.frontend.vringState(0, 1)), 0)
        kick(c.kicks[0])
        let u = try XCTUnwrap(c.queues[0].waitUsed())
        XCTAssertEqual(u.head, sub.head)
        XCTAssertEqual(c.ram.read(sub.status!, 1), [Status.ok])
        XCTAssertEqual(c.ram.read(sub.ins[0].0, 512), imageBytes(512, 512))
        XCTAssertEqual(try c.frontend.getVringBase(0), 2)
    }

    func testSetVringCallOnARunningRingMovesInterruptsToTheNewFd() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        XCTAssertEqual(try c.read(sector: 0, count: 512).0, Status.ok)
        let newCall = vdv_eventfd(0, 1)
        defer { close(newCall) }
        XCTAssertEqual(try c.frontend.command(.setVringCall, payload: c.frontend.u64Payload(0), fds: [newCall]), 0)
        c.queues[0].setUsedEvent(1)  // EVENT_IDX: interrupt for the next used entry
        XCTAssertEqual(try c.read(sector: 1, count: 512).0, Status.ok)
        XCTAssertEqual(try c.frontend.getVringBase(0), 2)  // after the poller's last flush
        XCTAssertEqual(drainEventFD(c.calls[0]), 1)       // the first request only
        XCTAssertEqual(drainEventFD(newCall), 1)          // the second request
    }

    func testKickWithoutAnFdIsRefused() throws {
        let s = try serve()
        let fe = try ackingFrontend(s.socket)
        // Bit 8: "no fd", i.e. the backend would have to poll the ring; not supported, so refused.
        XCTAssertNotEqual(try fe.command(.setVringKick, payload: fe.u64Payload(0x100)), 0)
        XCTAssertEqual(try fe.getU64(.getQueueNum), 1)
    }

    func testSecondFrontendReadsWhatTheFirstWrote() throws {
        let s = try serve()
        let data = payload(4096, seed: 62)
        do {
            let c1 = try BlkTestClient(socket: s.socket)
            XCTAssertEqual(try c1.write(sector: 300, data: data), Status.ok)
            XCTAssertEqual(s.export.stats["connected"] as? Bool, true)
            c1.frontend.disconnect()
        }
        let c2 = try BlkTestClient(socket: s.socket)
        let r = try c2.read(sector: 300, count: 4096)
        XCTAssertEqual(r.0, Status.ok)
        XCTAssertEqual(r.1, data)
        XCTAssertEqual(s.export.stats["connections"] as? Int, 2)
        XCTAssertEqual(s.export.stats["connected"] as? Bool, true)
        XCTAssertEqual(try readFile(s.image, offset: 300 * 512, count: 4096), data)
        // The second frontend's ring starts from its own base, not the first one's.
        XCTAssertEqual(try c2.frontend.getVringBase(0), 1)
    }

    func testWritebackModeDoesNotLeakToTheNextFrontend() throws {
        let s = try serve()
        do {
            let c1 = try BlkTestClient(socket: s.socket)
            XCTAssertEqual(try c1.frontend.setConfig(offset: 32, bytes: [0]), 0)
            c1.frontend.disconnect()
        }
        let c2 = try BlkTestClient(socket: s.socket)
        XCTAssertEqual(try c2.frontend.getConfig(offset: 32, size: 1), [1])
    }

    func testResetDeviceThenRenegotiate() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        let fe = c.frontend
        let data = payload(4096, seed: 63)
        XCTAssertEqual(try c.write(sector: 500, data: data), Status.ok)
        XCTAssertEqual(try fe.command(.setStatus, payload: fe.u64Payload(0x0f)), 0)
        XCTAssertEqual(try fe.setConfig(offset: 32, bytes: [0]), 0)

        XCTAssertEqual(try fe.command(.resetDevice), 0)
        XCTAssertEqual(try fe.getU64(.getStatus), 0)
        XCTAssertEqual(try fe.getConfig(offset: 32, size: 1), [1])
        // The old ring is gone: a stop reports the ring's base as reset (0), not the 1 request it served.
        XCTAssertEqual(try fe.getVringBase(0), 0)

        // Renegotiate the way QEMU starts a device: features, memory, rings.
        XCTAssertEqual(try fe.command(.setFeatures, payload: fe.u64Payload(c.ackedFeatures)), 0)
        XCTAssertEqual(try fe.command(.setMemTable, payload: memTablePayload(fe, c.ram), fds: [c.ram.fd]), 0)
        let q = DriverVirtqueue(ram: c.ram, size: 64)
        q.eventIdx = true
        let (k, call) = try fe.startVring(0, q)
        defer { close(k); close(call) }
        let ring = Ring(ram: c.ram, queue: q, kickFD: k)
        let r = try rawRequest(ring, type: BlkType.in, sector: 500, inLengths: [4096])
        XCTAssertEqual(r.status, Status.ok)
        XCTAssertEqual(r.data, data)
        let w = try rawRequest(ring, type: BlkType.out, sector: 508, out: [payload(512, seed: 64)])
        XCTAssertEqual(w.status, Status.ok)
        XCTAssertEqual(try readFile(s.image, offset: 508 * 512, count: 512), payload(512, seed: 64))
        XCTAssertEqual(try fe.getVringBase(0), 2)
    }

    func memTablePayload(_ fe: VhostUserFrontend, _ ram: GuestRAM) -> [UInt8] {
        var p: [UInt8] = []
        p.le(UInt32(1))
        p.le(UInt32(0))
        return p + fe.regionPayload(ram)
    }

    func testStopWithAConnectedFrontendRemovesTheSocket() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        XCTAssertEqual(try c.read(sector: 0, count: 512).0, Status.ok)
        XCTAssertTrue(isSocket(s.socket))
        s.export.stop()
        exports.removeAll()
        XCTAssertNil(fileStat(s.socket))
        XCTAssertTrue(c.frontend.backendClosed())
        XCTAssertEqual(s.export.stats["connected"] as? Bool, false)
    }

    // MARK: the socket file

    func testLiveSocketIsNotReplaced() throws {
        let s = try serve(id: "a")
        XCTAssertThrowsError(try serve(id: "b", socket: s.socket)) { e in
            XCTAssertTrue("\(e)".contains("listening"), "\(e)")
        }
        // The first export still serves.
        let c = try BlkTestClient(socket: s.socket)
        XCTAssertEqual(try c.read(sector: 0, count: 512).1, imageBytes(0, 512))
    }

    func testRegularFileAtSocketPathIsRefusedAndKept() throws {
        let sock = path("taken.sock")
        try Data("precious".utf8).write(to: URL(fileURLWithPath: sock))
        XCTAssertThrowsError(try serve(socket: sock)) { e in
            XCTAssertTrue("\(e)".contains("not a socket"), "\(e)")
        }
        XCTAssertEqual(try fileContents(sock), Data("precious".utf8))
    }

    func testStaleSocketIsReplacedAndServed() throws {
        let sock = path("stale.sock")
        let fd = vdv_unix_listen(sock, 0o600, 1)
        XCTAssertGreaterThanOrEqual(fd, 0)
        close(fd)  // left behind without unlink, as by a crashed daemon
        XCTAssertTrue(isSocket(sock))
        let s = try serve(socket: sock)
        let c = try BlkTestClient(socket: s.socket)
        XCTAssertEqual(try c.read(sector: 8, count: 512).1, imageBytes(8 * 512, 512))
    }

    func testSocketModeIsApplied() throws {
        let s1 = try serve(id: "m1", options: "socket-mode=0660")
        let s2 = try serve(id: "m2", options: "socket-mode=0640")
        let s3 = try serve(id: "m3")
        XCTAssertEqual(fileStat(s1.socket).map { $0.st_mode & 0o777 }, 0o660)
        XCTAssertEqual(fileStat(s2.socket).map { $0.st_mode & 0o777 }, 0o640)
        XCTAssertEqual(fileStat(s3.socket).map { $0.st_mode & 0o777 }, 0o600)
    }
}

/// QEMU disconnecting (guest reboot, QEMU restart or crash) must leave the export as it found it.
final class ReconnectHygieneTests: ExportTestCase {
    func testAThousandFrontendsLeakNoFdAndNoMapping() throws {
        let s = try serve(options: "num-queues=2", imageSize: 1 << 20)
        // One full cycle first: whatever the export keeps for good (its poller's io_uring state, the first
        // registered file slot, thread stacks) is in the baseline.
        do {
            let c = try BlkTestClient(socket: s.socket, queueCount: 2, ramSize: 4 << 20)
            XCTAssertEqual(try c.write(sector: 0, data: payload(4096, seed: 1)), Status.ok)
            c.frontend.disconnect()
        }
        XCTAssertTrue(eventually { (s.export.stats["connected"] as? Bool) == false })
        let fds = openFDCount(), maps = memfdMappingCount()
        for i in 0..<1000 {
            let c = try BlkTestClient(socket: s.socket, queueCount: 2, ramSize: 4 << 20)
            // Every tenth cycle does I/O on both queues; the others disconnect right after the rings start,
            // the rest in between (a guest reboot mid-I/O is the same as far as the backend can tell).
            if i % 10 == 0 {
                XCTAssertEqual(try c.read(sector: 0, count: 4096, queue: i % 20 == 0 ? 0 : 1).1, payload(4096, seed: 1))
            }
            c.frontend.disconnect()
            XCTAssertTrue(eventually { (s.export.stats["connected"] as? Bool) == false }, "cycle \(i): the export never saw the disconnect")
        }
        // The last frontend's memory and fds go when its poller lets go of its rings (a pass later): a safety net
        // for that, then the counts must be back exactly.
        _ = eventually { openFDCount() == fds && memfdMappingCount() == maps }
        XCTAssertEqual(openFDCount(), fds, "fds leaked over 1000 frontends")
        XCTAssertEqual(memfdMappingCount(), maps, "guest memory mappings leaked over 1000 frontends")
        // And the export still serves.
        let last = try BlkTestClient(socket: s.socket)
        XCTAssertEqual(try last.read(sector: 0, count: 4096).1, payload(4096, seed: 1))
    }
}
