#if canImport(Glibc)
import Glibc
#endif
import VhostUserTestSupport
import XCTest

/// SEQPACKET connections (VIRTIO_VSOCK_F_SEQPACKET): message boundaries survive both ways.
final class VsockSeqpacketTests: VsockTestCase {
    func testGuestMessagesKeepBoundariesAtHost() throws {
        let s = try serve(cid: 3)
        let d = try guest(s)
        let lfd = try listen(s.portPath(7000), type: Host.seqpacket)
        let (c, h) = try open(d, lfd, port: 7000, localPort: 300, type: SockType.seqpacket)
        XCTAssertEqual(c.type, SockType.seqpacket)

        let msgs = [pattern(1, seed: 41), pattern(4096, seed: 42), pattern(100 * 1024, seed: 43), pattern(3, seed: 44),
                    pattern(65536, seed: 45), pattern(65537, seed: 46)]
        let reader = Background { () throws -> [[UInt8]] in
            var out: [[UInt8]] = []
            for _ in 0..<6 { out.append(try Host.recvMessage(h)) }
            return out
        }
        for (i, m) in msgs.enumerated() {
            // 100 KiB goes out as several RW packets (EOM on the last); the others as one or two.
            try d.send(c, m, chunk: i == 2 ? 30_000 : 65536, eom: true)
        }
        let got = try reader.wait()
        XCTAssertEqual(got.map(\.count), msgs.map(\.count))
        for (g, m) in zip(got, msgs) { XCTAssertTrue(g == m) }
        XCTAssertFalse(c.reset)
    }

    func testPartialMessageIsHeldUntilEOM() throws {
        let s = try serve(cid: 3)
        let d = try guest(s)
        let lfd = try listen(s.portPath(7001), type: Host.seqpacket)
        let (c, h) = try open(d, lfd, port: 7001, localPort: 301, type: SockType.seqpacket)
        let m = pattern(10_000, seed: 47)
        try d.sendPacket(d.header(c, .rw), Array(m[0..<6000]))
        c.txCnt &+= 6000
        try barrier(d, c)
        var p = pollfd(fd: h, events: Int16(POLLIN), revents: 0)
        XCTAssertEqual(poll(&p, 1, 0), 0, "no message before EOM")
        try d.sendPacket(d.header(c, .rw, flags: 1), Array(m[6000...]))
        c.txCnt &+= 4000
        XCTAssertEqual(try Host.recvMessage(h), m)
    }

    func testHostMessagesKeepBoundariesAtGuest() throws {
        let s = try serve(cid: 3)
        let d = try guest(s)
        let lfd = try listen(s.portPath(7002), type: Host.seqpacket)
        let (c, h) = try open(d, lfd, port: 7002, localPort: 302, type: SockType.seqpacket)
        // 100 KiB is larger than a guest rx buffer (4 KiB): it arrives in fragments, EOM on the last.
        let msgs = [pattern(1, seed: 51), pattern(4096, seed: 52), pattern(100 * 1024, seed: 53), pattern(4097, seed: 54),
                    pattern(2, seed: 55)]
        let writer = Background { for m in msgs { try Host.sendMessage(h, m) } }
        XCTAssertTrue(d.wait(timeout: 30) { c.messages.count >= msgs.count })
        try writer.wait()
        XCTAssertEqual(c.messages.map(\.count), msgs.map(\.count))
        for (g, m) in zip(c.messages, msgs) { XCTAssertTrue(g == m) }
        XCTAssertEqual(c.partial, [], "no fragment left without EOM")
    }

    func testHostMessagesRespectGuestCredit() throws {
        let s = try serve(cid: 3)
        let d = try guest(s, bufAlloc: 8192)
        let lfd = try listen(s.portPath(7003), type: Host.seqpacket)
        let (c, h) = try open(d, lfd, port: 7003, localPort: 303, type: SockType.seqpacket)
        c.consuming = false
        let msgs = [pattern(6000, seed: 56), pattern(6000, seed: 57)]
        for m in msgs { try Host.sendMessage(h, m) }
        XCTAssertTrue(d.wait { c.totalReceived >= 8192 })
        try barrier(d, c)
        XCTAssertEqual(c.totalReceived, 8192, "fragments stop at the guest's buf_alloc")
        XCTAssertEqual(c.messages.count, 1)
        try d.consume(c)
        XCTAssertTrue(d.wait { c.messages.count == 2 })
        XCTAssertEqual(c.messages, msgs)
    }

    func testSeqpacketToStreamListenerGetsRST() throws {
        let s = try serve(cid: 3)
        let d = try guest(s)
        _ = try listen(s.portPath(7004), type: Host.stream)
        XCTAssertNil(try d.connect(port: 7004, localPort: 304, type: SockType.seqpacket),
                     "a SEQPACKET connect to a SOCK_STREAM listener fails")
    }

    func testSeqpacketWithoutFeatureGetsRST() throws {
        let s = try serve(cid: 3)
        // A driver that did not accept VIRTIO_VSOCK_F_SEQPACKET.
        let d = try guest(s, features: ~UInt64(1 << 1))
        let lfd = try listen(s.portPath(7005), type: Host.seqpacket)
        XCTAssertNil(try d.connect(port: 7005, localPort: 305, type: SockType.seqpacket))
        var p = pollfd(fd: lfd, events: Int16(POLLIN), revents: 0)
        XCTAssertEqual(poll(&p, 1, 0), 0, "the device never connected to the host listener")
        // Streams still work for it.
        let sl = try listen(s.portPath(7006))
        let (c, h) = try open(d, sl, port: 7006, localPort: 306)
        try d.send(c, Array("s".utf8))
        XCTAssertEqual(try Host.readExactly(h, 1), Array("s".utf8))
    }

    /// A message within the credit the device gave (buf_alloc 256 KiB) but larger than a Unix socket's
    /// default send buffer (net.core.wmem_default, 212992 here) must still reach the host whole.
    func testGuestMessageWithinCreditButOverDefaultSocketBufferIsDelivered() throws {
        let s = try serve(cid: 3)
        let d = try guest(s)
        let lfd = try listen(s.portPath(7010), type: Host.seqpacket)
        let (c, h) = try open(d, lfd, port: 7010, localPort: 310, type: SockType.seqpacket)
        let fits = pattern(200_000, seed: 48)
        let m = pattern(250_000, seed: 49)
        XCTAssertLessThanOrEqual(m.count, Int(c.peerBufAlloc), "within the device's credit")
        let reader = Background { () throws -> [[UInt8]] in [try Host.recvMessage(h), try Host.recvMessage(h)] }
        try d.send(c, fits, eom: true)
        try d.send(c, m, eom: true)
        let got = try reader.wait()
        XCTAssertTrue(got[0] == fits)
        if got[1].isEmpty {
            XCTAssertTrue(d.wait { c.reset })
            return XCTFail("regression: a \(m.count)-byte SEQPACKET message within the device's credit (buf_alloc \(c.peerBufAlloc)) resets the "
                          + "connection: VsockEngine.flushHost (Sources/Vsock/VsockEngine.swift:315-320) send()s it whole on a socket "
                          + "made by connectToHost (line 223) with the default SO_SNDBUF; Linux refuses a SEQPACKET message over "
                          + "sk_sndbuf-32 with EMSGSIZE, which flushHost treats as hostGone. Host got EOF, guest got RST=\(c.reset)")
        }
        XCTAssertEqual(got[1].count, m.count)
        XCTAssertTrue(got[1] == m)
    }

    /// SOCK_SEQPACKET allows empty messages; recv() returning 0 for one is not the peer closing.
    func testEmptyHostMessageIsNotTakenForEOF() throws {
        let s = try serve(cid: 3)
        let d = try guest(s)
        let lfd = try listen(s.portPath(7011), type: Host.seqpacket)
        let (c, h) = try open(d, lfd, port: 7011, localPort: 311, type: SockType.seqpacket)
        try Host.sendMessage(h, [])
        try Host.sendMessage(h, [7, 8, 9])
        XCTAssertTrue(d.wait { c.messages.last == [7, 8, 9] || c.peerShutdown != 0 })
        if c.peerShutdown != 0 {
            return XCTFail("regression: an empty SEQPACKET message from the host is taken for EOF: VsockEngine.pumpHostToGuest "
                          + "(Sources/Vsock/VsockEngine.swift:456-458) peeks with MSG_PEEK|MSG_TRUNC, gets 0 and calls hostClosed; the "
                          + "guest got SHUTDOWN(flags \(c.peerShutdown)) and the next message [7, 8, 9] was never delivered "
                          + "(messages: \(c.messages))")
        }
        XCTAssertEqual(c.messages.last, [7, 8, 9])
        XCTAssertEqual(c.peerShutdown, 0)
    }
}
