#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Virtio
import VhostUserTestSupport
import XCTest

/// Live migration support (VHOST_F_LOG_ALL with LOG_SHMFD): while QEMU has logging on, every guest page the
/// device writes is marked in the shared dirty bitmap; with it off, nothing is.
final class MigrationLogTests: ExportTestCase {
    static let logAll: UInt64 = 1 << 26
    static let logSHMFD: UInt64 = 1 << 1

    /// A dirty bitmap covering the client's RAM, as QEMU makes one, handed over with SET_LOG_BASE.
    func setLogBase(_ c: BlkTestClient) throws -> (UnsafeMutablePointer<UInt8>, Int) {
        let pages = (c.ram.guestAddress + c.ram.size) / 4096
        let size = Int((pages + 7) / 8 + 4095) / 4096 * 4096
        let fd = vdv_memfd_create("test-log")
        XCTAssertEqual(ftruncate(fd, off_t(size)), 0)
        defer { close(fd) }
        let p = try XCTUnwrap(mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0))
        var d: [UInt8] = []
        d.le(UInt64(size))
        d.le(UInt64(0))
        try c.frontend.send(VhostUserFrontend.Request.setLogBase.rawValue, payload: d, fds: [fd])
        let reply = try c.frontend.receive()
        XCTAssertEqual(reply.request, VhostUserFrontend.Request.setLogBase.rawValue, "QEMU waits for this answer")
        return (p.assumingMemoryBound(to: UInt8.self), size)
    }

    func dirty(_ log: UnsafeMutablePointer<UInt8>, _ gpa: UInt64) -> Bool {
        let page = gpa / 4096
        return log[Int(page / 8)] & UInt8(1 << (page % 8)) != 0
    }

    func dirtyCount(_ log: UnsafeMutablePointer<UInt8>, _ size: Int) -> Int {
        (0..<size).reduce(0) { $0 + log[$1].nonzeroBitCount }
    }

    /// QEMU as a migration starts or ends: LOG_ALL in the features, VHOST_VRING_F_LOG and the used ring's
    /// guest address on the ring, both while it runs.
    func setLogging(_ c: BlkTestClient, _ on: Bool) throws {
        XCTAssertEqual(try c.frontend.command(.setFeatures, payload: c.frontend.u64Payload(c.ackedFeatures | (on ? Self.logAll : 0))), 0)
        let q = c.queues[0]
        var a: [UInt8] = []
        a.le(UInt32(0)); a.le(UInt32(on ? 1 : 0))
        a.le(q.descUserAddress); a.le(q.usedUserAddress); a.le(q.availUserAddress); a.le(q.usedGPA)
        XCTAssertEqual(try c.frontend.command(.setVringAddr, payload: a), 0)
    }

    func testMigrationFeaturesAreOffered() throws {
        let s = try serve(imageSize: 1 << 20)
        let fe = try VhostUserFrontend(path: s.socket)
        XCTAssertNotEqual(try fe.getU64(.getFeatures) & Self.logAll, 0, "VHOST_F_LOG_ALL (QEMU blocks migration without it)")
        XCTAssertNotEqual(try fe.getU64(.getProtocolFeatures) & Self.logSHMFD, 0)
    }

    func testPagesTheDeviceWritesAreLoggedOnlyWhileLoggingIsOn() throws {
        let s = try serve(imageSize: 1 << 20)
        let c = try BlkTestClient(socket: s.socket, extraProtocolFeatures: Self.logSHMFD)
        let (log, size) = try setLogBase(c)
        defer { munmap(log, size) }
        let r = Ring(c)

        // Logging off: a read writes guest memory, and nothing is marked.
        XCTAssertEqual(try rawRequest(r, type: BlkType.in, sector: 0, inLengths: [8192]).status, Status.ok)
        XCTAssertEqual(dirtyCount(log, size), 0)

        try setLogging(c, true)
        // A read into two pages far apart from everything else, its status byte, and the used ring.
        let sub = submitRaw(r, header: requestHeader(type: BlkType.in, sector: 16), inLengths: [4096, 4096],
                            bufferOffset: 0)
        let used = try XCTUnwrap(r.queue.waitUsed())
        XCTAssertEqual(used.head, sub.head)
        for (gpa, _) in sub.ins { XCTAssertTrue(dirty(log, gpa), "read data at 0x\(String(gpa, radix: 16)) not logged") }
        XCTAssertTrue(dirty(log, sub.status!), "status byte not logged")
        XCTAssertTrue(dirty(log, r.queue.usedGPA), "used ring not logged")
        XCTAssertFalse(dirty(log, c.ram.guestAddress + c.ram.size - 4096), "an untouched page was logged")
        // A write changes no guest data but its status byte.
        memset(log, 0, size)
        let w = submitRaw(r, header: requestHeader(type: BlkType.out, sector: 32), out: [payload(4096, seed: 3)])
        XCTAssertNotNil(r.queue.waitUsed())
        XCTAssertTrue(dirty(log, w.status!))
        XCTAssertEqual(dirtyCount(log, size), Set([w.status! / 4096, r.queue.usedGPA / 4096,
                                                  (r.queue.usedGPA + 6 + 8 * UInt64(r.queue.size) - 1) / 4096]).count,
                       "only the status byte's page and the used ring's")

        // Migration over: logging stops.
        try setLogging(c, false)
        memset(log, 0, size)
        XCTAssertEqual(try rawRequest(r, type: BlkType.in, sector: 0, inLengths: [8192]).status, Status.ok)
        XCTAssertEqual(dirtyCount(log, size), 0)
        XCTAssertEqual(s.counter(.errors), 0)
    }

    func testOtherFeatureChangesWhileRunningAreStillRefused() throws {
        let s = try serve(imageSize: 1 << 20)
        let c = try BlkTestClient(socket: s.socket)
        XCTAssertNotEqual(try c.frontend.command(.setFeatures, payload: c.frontend.u64Payload(c.ackedFeatures & ~(1 << 29))), 0)
        let q = c.queues[0]
        var a: [UInt8] = []
        a.le(UInt32(0)); a.le(UInt32(0))
        a.le(q.descUserAddress + 4096); a.le(q.usedUserAddress); a.le(q.availUserAddress); a.le(UInt64(0))
        XCTAssertNotEqual(try c.frontend.command(.setVringAddr, payload: a), 0, "a running ring cannot move")
        XCTAssertEqual(try c.read(sector: 0, count: 4096).0, Status.ok)
    }
}
