import Net
import VhostUserTestSupport
import XCTest

/// Live migration of a net device (VHOST_F_LOG_ALL with LOG_SHMFD): while QEMU logs, every page the device writes
/// into the guest (rx buffers, used rings) is marked in the dirty bitmap; tx buffers, which it only reads, are not.
final class NetMigrationTests: NetTestCase {
    func testMigrationFeaturesAreOffered() throws {
        let sw = makeSwitch()
        let a = try serve("a", switch: sw)
        let fe = try VhostUserFrontend(path: a.socket)
        XCTAssertNotEqual(try fe.getU64(.getFeatures) & TestDirtyLog.logAll, 0, "QEMU blocks migration without LOG_ALL")
        XCTAssertNotEqual(try fe.getU64(.getProtocolFeatures) & TestDirtyLog.logSHMFD, 0)
    }

    func testFramesWrittenIntoTheGuestAreLoggedOnlyWhileLoggingIsOn() throws {
        let sw = makeSwitch()
        let a = try serve("a", switch: sw), b = try serve("b", switch: sw)
        let ga = try guest(a, extraProtocolFeatures: TestDirtyLog.logSHMFD), gb = try guest(b)
        let log = try TestDirtyLog(frontend: ga.frontend, covering: ga.ram)
        let rings = [(UInt32(0), ga.rx[0]), (UInt32(1), ga.tx[0])]
        let f1 = TestFrame.ethernet(dst: mac(1), src: mac(2), type: 0x88b5, payload: pattern(100, seed: 1))

        // Logging off: a frame lands in a's memory and nothing is marked.
        ga.postRx(8, size: 512)
        gb.send(f1)
        XCTAssertEqual(ga.receive()?.frame, f1)
        XCTAssertEqual(log.dirtyPages, 0)

        // Migration starts: a frame merged over three of the 512-byte rx buffers.
        try TestDirtyLog.setLogging(true, frontend: ga.frontend, features: ga.features | VhostUserFrontend.protocolFeaturesBit,
                                    rings: rings)
        let big = TestFrame.ethernet(dst: mac(1), src: mac(2), type: 0x88b5, payload: pattern(1400, seed: 2))
        gb.send(big)
        let got = try XCTUnwrap(ga.receive())
        XCTAssertEqual(got.frame, big)
        XCTAssertEqual(got.bufferGPAs.count, 3)
        for g in got.bufferGPAs { XCTAssertTrue(log.isDirty(g), "rx buffer at 0x\(String(g, radix: 16)) not logged") }
        XCTAssertTrue(log.isDirty(ga.rx[0].usedGPA), "rx used ring not logged")
        let afterRx = log.dirtyPages

        // a transmits: its tx used ring is written (logged), its tx buffer only read (not logged).
        log.clear()
        let out = TestFrame.ethernet(dst: mac(2), src: mac(1), type: 0x88b5, payload: pattern(64, seed: 3))
        gb.postRx(4)
        let head = ga.send(out)
        XCTAssertEqual(gb.receive()?.frame, out)
        XCTAssertTrue(ga.waitTxDone())
        XCTAssertTrue(log.isDirty(ga.tx[0].usedGPA), "tx used ring not logged")
        // Used rings are written (entries, and notification fields as the poller sleeps); nothing else is.
        var ringPages = Set<UInt64>()
        for q in [ga.tx[0], ga.rx[0]] {
            let end: UInt64 = q.usedGPA + 6 + 8 * UInt64(q.size) - 1
            ringPages.formUnion([q.usedGPA / 4096, end / 4096])
        }
        let pages = UInt64(log.size * 8)
        let dirty = Set((0..<pages).filter { (p: UInt64) -> Bool in log.isDirty(p * 4096) })
        XCTAssertTrue(dirty.isSubset(of: ringPages), "only used rings' pages, not the tx buffer (head \(head)): \(dirty); rx logged \(afterRx) pages before")

        // Migration over: nothing is logged any more.
        try TestDirtyLog.setLogging(false, frontend: ga.frontend, features: ga.features | VhostUserFrontend.protocolFeaturesBit,
                                    rings: rings)
        log.clear()
        gb.send(f1)
        XCTAssertEqual(ga.receive()?.frame, f1)
        XCTAssertEqual(log.dirtyPages, 0)
        XCTAssertEqual(a.counter(.dropNoRxBuffers), 0)
    }
}
