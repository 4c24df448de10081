#if canImport(Glibc)
import Glibc
#endif
import Foundation
import VhostUserTestSupport
import XCTest

/// The frontend going away, coming back, and the export stopping.
final class VsockLifecycleTests: VsockTestCase {
    func testFrontendDisconnectClosesAllHostSocketsAndNewFrontendWorks() throws {
        let s = try serve(cid: 3)
        var d1: VsockTestDriver? = try guest(s)
        let lfd = try listen(s.portPath(5000))
        let fdsBefore = openFDCount()

        // Every kind of host socket the export can hold:
        let (g1, hGuest) = try open(d1!, lfd, port: 5000, localPort: 1)          // guest-initiated, established
        let hHost = try hostConnect(s, port: 80)                                   // host-initiated, established
        let c2 = try d1!.accept(port: 80)
        XCTAssertEqual(try Host.readLine(hHost).line, "OK \(c2.peerPort)\n")
        let hPending = try hostConnect(s, port: 81)                                // CONNECT sent, guest never answers
        XCTAssertTrue(d1!.wait { d1!.unmatched.contains { $0.header.op == Op.request && $0.header.dstPort == 81 } })
        let hNoLine = try Host.connect(s.uds)                                      // connected, no line yet
        fdsToClose.append(hNoLine)
        try Host.writeAll(hNoLine, Array("CONN".utf8))
        // Data in flight both ways does not matter.
        try d1!.send(g1, pattern(1000, seed: 71))
        try Host.writeAll(hHost, pattern(1000, seed: 72))

        d1!.frontend.disconnect()
        for (name, h) in [("guest-initiated", hGuest), ("host-initiated", hHost), ("pending", hPending), ("no line", hNoLine)] {
            let (_, end) = try Host.readToEnd(h)
            XCTAssertTrue(end == .eof || end == .reset, "\(name) host socket closed")
        }
        XCTAssertTrue(logs.contains("frontend disconnected"))
        drivers.removeAll()
        d1 = nil

        // A new frontend (the VM reconnecting) gets a working device.
        let d2 = try guest(s)
        XCTAssertEqual(d2.guestCID, 3)
        let (c, h) = try open(d2, lfd, port: 5000, localPort: 1)   // same local port as before: nothing stale
        let up = pattern(500_000, seed: 73)
        let reader = Background { try Host.readExactly(h, up.count) }
        try d2.send(c, up)
        XCTAssertTrue(try reader.wait() == up)
        let hh = try hostConnect(s, port: 80)
        let cc = try d2.accept(port: 80)
        XCTAssertEqual(try Host.readLine(hh).line, "OK \(cc.peerPort)\n")
        try Host.writeAll(hh, Array("again".utf8))
        XCTAssertEqual(try receive(d2, cc, count: 5), Array("again".utf8))

        // Close everything: only what this test still holds remains open.
        try d2.reset(c)
        try d2.reset(cc)
        try barrier(d2)
        for f in [hGuest, hHost, hPending, hNoLine] { closeHost(f) }
        XCTAssertEqual(try Host.readToEnd(h).end, .eof)
        XCTAssertEqual(try Host.readToEnd(hh).end, .eof)
        closeHost(h)
        closeHost(hh)
        // d1's fds are gone, d2 has the same number; the device holds no host socket.
        XCTAssertEqual(openFDCount(), fdsBefore)
    }

    func testStopClosesHostSocketsAndRemovesUDSPath() throws {
        let s = try serve(cid: 3)
        let d = try guest(s)
        let lfd = try listen(s.portPath(5000))
        let (_, h1) = try open(d, lfd, port: 5000, localPort: 1)
        let h2 = try hostConnect(s, port: 80)
        _ = try d.accept(port: 80)
        XCTAssertEqual(try Host.readLine(h2).line.prefix(3), "OK ")
        XCTAssertTrue(FileManager.default.fileExists(atPath: s.uds))
        for e in exports { e.stop() }
        exports.removeAll()
        XCTAssertEqual(try Host.readToEnd(h1).end, .eof)
        XCTAssertEqual(try Host.readToEnd(h2).end, .eof)
        XCTAssertFalse(FileManager.default.fileExists(atPath: s.uds), "uds-path removed at stop")
        XCTAssertFalse(FileManager.default.fileExists(atPath: s.socket))
        XCTAssertThrowsError(try Host.connect(s.uds))
    }

    func testHostConnectBeforeDriverStartsNeverGetsOKWithoutGuestAccept() throws {
        let s = try serve(cid: 3)
        // Nobody drives the device yet: the host connection waits in the listen backlog.
        let early = try hostConnect(s, port: 80)
        let d = try guest(s)
        // Either the started device hands it to the guest as a REQUEST, or it closes it (the guest driver was
        // not fully started when the line was read). Wait for whichever happens; never an OK without accept.
        XCTAssertTrue(d.wait {
            d.unmatched.contains { $0.header.op == Op.request && $0.header.dstPort == 80 } || Host.readable(early, timeout: 0)
        })
        if d.unmatched.contains(where: { $0.header.op == Op.request && $0.header.dstPort == 80 }) {
            let c = try d.accept(port: 80)
            XCTAssertEqual(try Host.readLine(early).line, "OK \(c.peerPort)\n")
        } else {
            let (line, closed) = try Host.readLine(early)
            XCTAssertEqual(line, "")
            XCTAssertTrue(closed)
            XCTAssertTrue(logs.contains("the guest driver has not started the device"))
        }
        // Once the driver runs, host connections work.
        let h = try hostConnect(s, port: 81)
        let c2 = try d.accept(port: 81)
        XCTAssertEqual(try Host.readLine(h).line, "OK \(c2.peerPort)\n")
    }

    func testReconnectedDeviceStartsWithNoConnections() throws {
        let s = try serve(cid: 3)
        let lfd = try listen(s.portPath(5000))
        do {
            let d1 = try guest(s)
            _ = try open(d1, lfd, port: 5000, localPort: 1)
            d1.frontend.disconnect()
            drivers.removeAll()
        }
        let d2 = try guest(s)
        // A packet for the old connection's ports finds nothing: RST.
        try d2.sendPacket(rawHeader(d2, srcPort: 1, dstPort: 5000, op: Op.rw), [1, 2, 3])
        let got = packets(d2, where: { $0.header.dstPort == 1 }, until: { !$0.isEmpty })
        XCTAssertEqual(got.first?.header.op, Op.rst)
    }
}
