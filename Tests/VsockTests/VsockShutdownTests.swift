#if canImport(Glibc)
import Glibc
#endif
import Foundation
import VhostUserTestSupport
import XCTest

/// Half-close and close (virtio 1.3, 5.10.6.5).
final class VsockShutdownTests: VsockTestCase {
    func testGuestShutdownSendGivesHostEOFAndHostCanStillAnswer() throws {
        let s = try serve(cid: 3)
        let d = try guest(s)
        let lfd = try listen(s.portPath(5000))
        let (c, h) = try open(d, lfd, port: 5000, localPort: 100)
        // More than the device's buf_alloc, so some of it may still wait in the device when SHUTDOWN comes:
        // the host must see every byte, then EOF.
        let up = pattern(600_000, seed: 21)
        let reader = Background { try Host.readToEnd(h) }
        try d.send(c, up, timeout: 60)
        try d.shutdown(c, flags: Shutdown.send)
        let (got, end) = try reader.wait()
        XCTAssertEqual(end, .eof)
        XCTAssertEqual(got.count, up.count)
        XCTAssertTrue(got == up)

        // The host still writes; the guest still reads.
        let back = pattern(300_000, seed: 22)
        let writer = Background { try Host.writeAll(h, back) }
        let recv = try receive(d, c, count: back.count)
        try writer.wait()
        XCTAssertTrue(recv == back)
        XCTAssertFalse(c.reset)
        XCTAssertEqual(c.peerShutdown, 0, "the host has not shut down its side")

        // Now the host closes: the guest hears SHUTDOWN(SEND) from the host side.
        closeHost(h)
        XCTAssertTrue(d.wait { c.peerShutdown & Shutdown.send != 0 })
        XCTAssertFalse(c.reset)
    }

    func testHostShutWrGivesGuestShutdownSendAndGuestCanStillSend() throws {
        let s = try serve(cid: 3)
        let d = try guest(s)
        let h = try hostConnect(s, port: 80)
        let c = try d.accept(port: 80)
        XCTAssertEqual(try Host.readLine(h).line, "OK \(c.peerPort)\n")
        let down = pattern(200_000, seed: 23)
        try Host.writeAll(h, down)
        shutdown(h, Int32(SHUT_WR))
        // All data first, then SHUTDOWN with the SEND flag (the host will send no more).
        XCTAssertTrue(d.wait { c.peerShutdown != 0 })
        XCTAssertEqual(c.peerShutdown, Shutdown.send)
        XCTAssertEqual(c.received.count, down.count, "SHUTDOWN came after every byte")
        XCTAssertTrue(c.received == down)
        XCTAssertFalse(c.reset)

        // The guest still sends; the host reads it all.
        let up = pattern(500_000, seed: 24)
        let reader = Background { try Host.readExactly(h, up.count) }
        try d.send(c, up, timeout: 60)
        XCTAssertTrue(try reader.wait() == up)

        // Guest closes too: SHUTDOWN(RCV|SEND) is answered with RST and the host socket ends.
        try d.shutdown(c, flags: Shutdown.rcv | Shutdown.send)
        XCTAssertTrue(d.wait { c.reset })
        let (rest, _) = try Host.readToEnd(h)
        XCTAssertEqual(rest, [])
    }

    func testGuestShutdownBothIsAnsweredWithRSTAndClosesHostSocket() throws {
        let s = try serve(cid: 3)
        let d = try guest(s)
        let lfd = try listen(s.portPath(5000))
        let (c, h) = try open(d, lfd, port: 5000, localPort: 101)
        try d.send(c, Array("last words".utf8))
        try d.shutdown(c, flags: Shutdown.rcv | Shutdown.send)
        let got = packets(d, where: { $0.header.dstPort == 101 && $0.header.srcPort == 5000 }, until: { $0.contains { $0.header.op == Op.rst } })
        guard let rst = got.first(where: { $0.header.op == Op.rst }) else { return XCTFail("no RST after SHUTDOWN(3)") }
        XCTAssertEqual(rst.header.srcCID, hostCID)
        XCTAssertEqual(rst.header.dstCID, 3)
        XCTAssertEqual(rst.header.type, SockType.stream)
        let (data, end) = try Host.readToEnd(h)
        XCTAssertEqual(end, .eof)
        XCTAssertEqual(data, Array("last words".utf8), "data sent before SHUTDOWN still arrives")
        // The connection is gone in the device: a packet on it is answered by RST.
        try d.sendPacket(rawHeader(d, srcPort: 101, dstPort: 5000, op: Op.creditRequest))
        XCTAssertFalse(packets(d, where: { $0.header.dstPort == 101 && $0.header.op == Op.rst }, until: { !$0.isEmpty }).isEmpty)
    }

    func testGuestShutdownBothWaitsForBufferedDataBeforeClosing() throws {
        // The host does not read: the guest fills the host socket and the device's buffer, then closes.
        // SHUTDOWN(3) must not drop what the device still holds.
        let s = try serve(cid: 3, options: "tx-buffer-size=65536")
        let d = try guest(s)
        let lfd = try listen(s.portPath(5000))
        let (c, h) = try open(d, lfd, port: 5000, localPort: 102)
        let up = pattern(8 << 20, seed: 25)
        let sent = try sendUntilStalled(d, c, up)
        XCTAssertLessThan(sent, up.count, "the host socket and the device buffer filled up")
        XCTAssertEqual(Int(c.txCnt &- c.peerFwdCnt), 65536, "the device holds exactly its buf_alloc")
        try d.shutdown(c, flags: Shutdown.rcv | Shutdown.send)
        try barrier(d, probePort: 0xBA45)
        XCTAssertFalse(c.reset, "no RST while data still waits for the host")
        let (got, end) = try Host.readToEnd(h)
        XCTAssertEqual(end, .eof)
        XCTAssertEqual(got.count, sent)
        XCTAssertTrue(got == Array(up[0..<sent]))
        XCTAssertTrue(d.wait { c.reset }, "RST once the last byte is out")
    }

    func testGuestRSTClosesHostSocket() throws {
        let s = try serve(cid: 3)
        let d = try guest(s)
        let lfd = try listen(s.portPath(5000))
        let (c, h) = try open(d, lfd, port: 5000, localPort: 103)
        try d.send(c, Array("x".utf8))
        try d.reset(c)
        let (data, end) = try Host.readToEnd(h)
        XCTAssertEqual(end, .eof)
        XCTAssertEqual(data, Array("x".utf8))
    }

    func testHostCloseIsSeenByGuestAndGuestRSTFinishes() throws {
        let s = try serve(cid: 3)
        let d = try guest(s)
        let lfd = try listen(s.portPath(5000))
        let (c, h) = try open(d, lfd, port: 5000, localPort: 104)
        try Host.writeAll(h, Array("bye".utf8))
        closeHost(h)
        XCTAssertTrue(d.wait { c.peerShutdown & Shutdown.send != 0 })
        XCTAssertEqual(c.received, Array("bye".utf8))
        try d.reset(c)
        try barrier(d)
    }

    /// CPU time (utime + stime, clock ticks) of this process's poller threads.
    private func pollerCPUTicks() -> Int {
        guard let tasks = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task") else { return -1 }
        var total = 0
        for t in tasks {
            guard let comm = try? String(contentsOfFile: "/proc/self/task/\(t)/comm", encoding: .utf8), comm.hasPrefix("vdevd-poll"),
                  let stat = try? String(contentsOfFile: "/proc/self/task/\(t)/stat", encoding: .utf8),
                  let close = stat.range(of: ")", options: .backwards) else { continue }
            let f = stat[close.upperBound...].split(separator: " ")
            total += (Int(f[11]) ?? 0) + (Int(f[12]) ?? 0)   // fields 14 and 15 of proc(5)
        }
        return total
    }

    /// Ticks the pollers use while the test thread sleeps `seconds` (nothing for them to do).
    private func pollerTicks(idle seconds: Double) -> (used: Int, window: Int) {
        let t0 = pollerCPUTicks()
        usleep(UInt32(seconds * 1_000_000))
        return (pollerCPUTicks() - t0, Int(Double(sysconf(Int32(_SC_CLK_TCK))) * seconds))
    }

    /// A host peer that closed (EPOLLHUP, reported by epoll whatever the interest mask) while the guest has
    /// not closed yet: the poller has nothing to do and must sleep, not spin.
    func testPollerSleepsAfterHostCloseWhileGuestKeepsConnection() throws {
        let s = try serve(cid: 3)
        let d = try guest(s)
        let lfd = try listen(s.portPath(5000))
        let (c, h) = try open(d, lfd, port: 5000, localPort: 105)
        let before = pollerTicks(idle: 0.3)
        XCTAssertLessThan(before.used * 2, before.window, "idle poller with an open connection sleeps")
        closeHost(h)
        XCTAssertTrue(d.wait { c.peerShutdown & Shutdown.send != 0 })
        let after = pollerTicks(idle: 0.3)
        try d.reset(c)
        try barrier(d)
        let reset = pollerTicks(idle: 0.3)
        if after.used * 2 >= after.window {
            return XCTFail("regression: VsockEngine spins its poller after a host peer closes (Sources/Vsock/VsockEngine.swift:585-606, "
                          + "388-394): hostClosed/updateWatch drop EPOLLIN but epoll still reports EPOLLHUP (level-triggered), "
                          + "connectionReady -> pumpHostToGuest returns at once, forever. Poller CPU over \(after.window) ticks idle: "
                          + "\(before.used) with the connection open, \(after.used) after the host closed, \(reset.used) after the guest's RST")
        }
        XCTAssertLessThan(after.used * 2, after.window)
    }
}
