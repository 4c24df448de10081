#if canImport(Glibc)
import Glibc
#endif
import VhostUserTestSupport
import Vsock
import XCTest

/// Host programs that connect to uds-path and never send `CONNECT <port>` cannot keep the guest unreachable.
final class VsockConnectLineTests: VsockTestCase {
    override func tearDown() {
        VsockOptions.maxAwaitingConnectLine = 256
        VsockOptions.connectLineTimeout = 10
        super.tearDown()
    }

    func testSilentHostConnectionsAreCappedAndEvictedAfterTheTimeout() throws {
        VsockOptions.maxAwaitingConnectLine = 8
        VsockOptions.connectLineTimeout = 0.3
        let s = try serve(id: "cl", cid: 5)
        let d = try guest(s)
        // Eight silent connections fill the waiting room.
        var silent: [Int32] = []
        for _ in 0..<8 {
            let fd = try Host.connect(s.uds)
            fdsToClose.append(fd)
            silent.append(fd)
        }
        // A ninth, at once: refused (closed without OK) while the others are young.
        let early = try Host.connect(s.uds)
        fdsToClose.append(early)
        // vdevd may close it before the line is written (EPIPE): either way it is refused.
        _ = try? Host.writeAll(early, Array("CONNECT 900\n".utf8))
        XCTAssertTrue(try Host.readLine(early).closed, "no room while the silent ones are within their time")
        usleep(400_000)
        // Past the timeout the silent ones make room: a real CONNECT goes through to the guest.
        let fd = try hostConnect(s, port: 901)
        let conn = try d.accept(port: 901)
        let (line, closed) = try Host.readLine(fd)
        XCTAssertFalse(closed)
        XCTAssertTrue(line.hasPrefix("OK "), line)
        XCTAssertEqual(conn.localPort, 901)
        // And the silent ones were closed by vdevd.
        var b: UInt8 = 0
        XCTAssertEqual(read(silent[0], &b, 1), 0, "evicted connections see EOF")
    }
}
