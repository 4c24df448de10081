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
    static let logAll = TestDirtyLog.logAll
    static let logSHMFD = TestDirtyLog.logSHMFD

    /// QEMU as a migration starts or ends, on the client's one ring.
    func setLogging(_ c: BlkTestClient, _ on: Bool) throws {
        try TestDirtyLog.setLogging(on, frontend: c.frontend, features: c.ackedFeatures, rings: [(0, c.queues[0])])
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
        let log = try TestDirtyLog(frontend: c.frontend, covering: c.ram)
        let r = Ring(c)

        // Logging off: a read writes guest memory, and nothing is marked.
        XCTAssertEqual(try rawRequest(r, type: BlkType.in, sector: 0, inLengths: [8192]).status, Status.ok)
        XCTAssertEqual(log.dirtyPages, 0)

        try setLogging(c, true)
        // A read into two pages far apart from everything else, its status byte, and the used ring.
        let sub = submitRaw(r, header: requestHeader(type: BlkType.in, sector: 16), inLengths: [4096, 4096],
                            bufferOffset: 0)
        let used = try XCTUnwrap(r.queue.waitUsed())
        XCTAssertEqual(used.head, sub.head)
        for (gpa, _) in sub.ins { XCTAssertTrue(log.isDirty(gpa), "read data at 0x\(String(gpa, radix: 16)) not logged") }
        XCTAssertTrue(log.isDirty(sub.status!), "status byte not logged")
        XCTAssertTrue(log.isDirty(r.queue.usedGPA), "used ring not logged")
        XCTAssertFalse(log.isDirty(c.ram.guestAddress + c.ram.size - 4096), "an untouched page was logged")
        // A write changes no guest data but its status byte.
        log.clear()
        let w = submitRaw(r, header: requestHeader(type: BlkType.out, sector: 32), out: [payload(4096, seed: 3)])
        XCTAssertNotNil(r.queue.waitUsed())
        XCTAssertTrue(log.isDirty(w.status!))
        XCTAssertEqual(log.dirtyPages, Set([w.status! / 4096, r.queue.usedGPA / 4096,
                                                  (r.queue.usedGPA + 6 + 8 * UInt64(r.queue.size) - 1) / 4096]).count,
                       "only the status byte's page and the used ring's")

        // Migration over: logging stops.
        try setLogging(c, false)
        log.clear()
        XCTAssertEqual(try rawRequest(r, type: BlkType.in, sector: 0, inLengths: [8192]).status, Status.ok)
        XCTAssertEqual(log.dirtyPages, 0)
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
