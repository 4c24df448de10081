#if canImport(Glibc)
import Glibc
#endif
import Exports
import Foundation
import VhostUserTestSupport
import XCTest

/// Issue 14, finding 6: one frontend is served at a time, so a frontend that connects and says nothing (or
/// never gets past GET_FEATURES) must not hold the export forever.
final class HandshakeTimeoutTests: ExportTestCase {
    private var savedTimeout = 0

    override func setUpWithError() throws {
        try super.setUpWithError()
        savedTimeout = VhostUserExport.handshakeTimeoutMillis
        VhostUserExport.handshakeTimeoutMillis = 300
    }

    override func tearDown() {
        VhostUserExport.handshakeTimeoutMillis = savedTimeout
        super.tearDown()
    }

    func testSilentFrontendIsClosedAfterHandshakeTimeout() throws {
        let s = try serve(id: "diskA")
        let silent = try VhostUserFrontend(path: s.socket)
        XCTAssertTrue(silent.backendClosed(timeout: 30), "a silent frontend still holds the export")
        XCTAssertTrue(logs.contains("frontend did not start its handshake (SET_OWNER or SET_FEATURES) within 300 ms"), "\(logs.all)")
        XCTAssertEqual(try BlkTestClient(socket: s.socket).read(sector: 6, count: 512).1, imageBytes(6 * 512, 512))
    }

    /// Questions alone do not count: GET_FEATURES answered, then silence, is closed the same way.
    func testFrontendThatOnlyAsksIsClosedAfterHandshakeTimeout() throws {
        let s = try serve(id: "diskA")
        let fe = try VhostUserFrontend(path: s.socket)
        XCTAssertNotEqual(try fe.getU64(.getFeatures), 0)
        XCTAssertTrue(fe.backendClosed(timeout: 30))
        XCTAssertTrue(logs.contains("within 300 ms"), "\(logs.all)")
    }

    /// Once SET_OWNER/SET_FEATURES came, an idle frontend (a guest that has not loaded its driver) is kept.
    func testFrontendPastHandshakeMayIdle() throws {
        let s = try serve(id: "diskA")
        let c = try BlkTestClient(socket: s.socket)
        XCTAssertFalse(c.frontend.backendClosed(timeout: 1), "an idle frontend past its handshake was closed")
        XCTAssertEqual(try c.read(sector: 2, count: 512).1, imageBytes(2 * 512, 512))
    }
}
