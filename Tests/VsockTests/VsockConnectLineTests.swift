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
        VsockOptions.maxAwaitingGuestAnswer = 256
        VsockOptions.guestAnswerTimeout = 10
        super.tearDown()
    }

    /// Waits (a safety net, not a timing assertion) for a log line the device writes after closing fds.
    private func logLine(_ text: String) -> Bool {
        for _ in 0..<10_000 {
            if logs.contains(text) { return true }
            usleep(1000)
        }
        return logs.contains(text)
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
        // A ninth, at once, while the others are young: the oldest silent one makes room (issue 14: rotating
        // silent connections used to keep every real CONNECT out), and the CONNECT reaches the guest.
        let fd = try hostConnect(s, port: 901)
        let conn = try d.accept(port: 901)
        let (line, closed) = try Host.readLine(fd)
        XCTAssertFalse(closed)
        XCTAssertTrue(line.hasPrefix("OK "), line)
        XCTAssertEqual(conn.localPort, 901)
        var b: UInt8 = 0
        var n = read(silent[0], &b, 1)
        while n < 0 && errno == EINTR { n = read(silent[0], &b, 1) }
        XCTAssertEqual(n, 0, "the oldest silent connection was evicted (EOF)")
        XCTAssertTrue(logs.contains("at its cap of 8 host connections without a CONNECT line; closing the oldest"), "\(logs.all)")
        // Past the timeout the rest are closed by the timer.
        for f in silent.dropFirst() {
            var n = read(f, &b, 1)
            while n < 0 && errno == EINTR { n = read(f, &b, 1) }
            XCTAssertEqual(n, 0, "silent connections see EOF after the timeout (errno \(n < 0 ? errno : 0))")
        }
        // The timer closes, then logs: the line may follow the EOF by a moment.
        XCTAssertTrue(logLine("host connection(s) that sent no CONNECT line within 0.3 s"), "\(logs.all)")
    }

    /// Issue 14, finding 5: host clients that CONNECT while the guest never answers do not keep their fds: past
    /// the cap new ones are closed, and each is closed after the answer timeout (the guest gets RST).
    func testHostConnectionsWaitingForTheGuestAreCappedAndTimedOut() throws {
        VsockOptions.maxAwaitingGuestAnswer = 3
        VsockOptions.guestAnswerTimeout = 0.3
        let s = try serve(id: "cl", cid: 5)
        let d = try guest(s)
        // The guest driver never accepts port 902: the three wait for an answer.
        let waiting = try (0..<3).map { _ in try hostConnect(s, port: 902) }
        let over = try hostConnect(s, port: 902)
        XCTAssertTrue(try Host.readLine(over).closed, "a fourth beyond the cap was kept")
        XCTAssertTrue(logs.contains("at its cap of 3 host connections waiting for the guest's answer"), "\(logs.all)")
        for f in waiting { XCTAssertTrue(try Host.readLine(f).closed, "a connection the guest never answered was kept") }
        // One line per timer tick that closed some (the three may expire on different ticks).
        XCTAssertTrue(logLine("host connection(s) the guest did not answer within 0.3 s"), "\(logs.all)")
        // The guest was told: an RST for each REQUEST it saw.
        let rsts = packets(d, where: { $0.header.op == Op.rst && $0.header.dstPort == 902 }, until: { $0.count >= 3 })
        XCTAssertEqual(rsts.count, 3)
        // And a new CONNECT after that is served.
        let fd = try hostConnect(s, port: 903)
        _ = try d.accept(port: 903)
        XCTAssertTrue(try Host.readLine(fd).line.hasPrefix("OK "))
    }
}
