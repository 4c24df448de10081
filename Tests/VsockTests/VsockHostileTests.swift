#if canImport(Glibc)
import Glibc
#endif
import VhostUserTestSupport
import XCTest

/// A guest that lies in its headers: the device answers RST where it can, drops what it cannot answer,
/// and keeps serving everyone else.
final class VsockHostileTests: VsockTestCase {
    func testGarbageHeadersAreResetOrDroppedAndEverythingElseKeepsWorking() throws {
        let a = try serve(id: "a", cid: 3)
        let b = try serve(id: "b", cid: 5)   // one poller: the same thread serves both exports
        let da = try guest(a)
        let db = try guest(b)
        let lfd = try listen(a.portPath(6000))
        let (ca, ha) = try open(da, lfd, port: 6000, localPort: 100)
        let errorsBefore = a.counter(.errors, 1)

        // 1. Another CID as source: no reply is possible (the device cannot speak for CID 99).
        var spoof = rawHeader(da, srcPort: 201, dstPort: 6000, op: Op.request)
        spoof.srcCID = 99
        try da.sendPacket(spoof)
        // 2. len larger than the payload given.
        try da.sendPacket(rawHeader(da, srcPort: 202, dstPort: 6000, op: Op.rw), pattern(10, seed: 1), lengthOverride: 1000)
        // 3. Unknown op.
        try da.sendPacket(rawHeader(da, srcPort: 203, dstPort: 6000, op: 42))
        // 4. op 0 (VIRTIO_VSOCK_OP_INVALID).
        try da.sendPacket(rawHeader(da, srcPort: 204, dstPort: 6000, op: 0))
        // 5. Unknown type.
        try da.sendPacket(rawHeader(da, srcPort: 205, dstPort: 6000, op: Op.request, type: 9))
        // 6. A destination CID nobody has.
        try da.sendPacket(rawHeader(da, dstCID: 77, srcPort: 206, dstPort: 6000, op: Op.request))
        // 7. RW, SHUTDOWN and CREDIT_UPDATE for connections that do not exist.
        try da.sendPacket(rawHeader(da, srcPort: 207, dstPort: 6000, op: Op.rw), pattern(10, seed: 2))
        try da.sendPacket(rawHeader(da, srcPort: 208, dstPort: 6000, op: Op.shutdown))
        try da.sendPacket(rawHeader(da, srcPort: 209, dstPort: 6000, op: Op.creditUpdate))
        // 8. RST for nothing: never answered (no RST storms).
        try da.sendPacket(rawHeader(da, srcPort: 210, dstPort: 6000, op: Op.rst))
        // 9. Shorter than a header: dropped.
        let short = da.ram.allocate(20)
        da.ram.write(short, [UInt8](repeating: 0xEE, count: 20))
        da.txq.add([.init(gpa: short, length: 20, writable: false)])
        // 10. RW with a huge len and no payload at all.
        try da.sendPacket(rawHeader(da, srcPort: 211, dstPort: 6000, op: Op.rw), [], lengthOverride: 0xFFFF_FFFF)

        // Everything above has been handled once this round trip returns.
        try barrier(da, ca)
        let rsts = da.unmatched.filter { $0.header.op == Op.rst }
        let answered = Set(rsts.map(\.header.dstPort))
        XCTAssertEqual(answered, [202, 203, 204, 205, 206, 207, 208, 209, 211])
        XCTAssertEqual(rsts.count, answered.count, "one RST each")
        for r in rsts {
            XCTAssertEqual(r.header.dstCID, 3)
            XCTAssertEqual(r.header.srcPort, 6000)
            XCTAssertEqual(r.header.len, 0)
        }
        XCTAssertEqual(rsts.first { $0.header.dstPort == 206 }?.header.srcCID, 77, "RST comes from the CID addressed")
        XCTAssertEqual(rsts.first { $0.header.dstPort == 205 }?.header.type, 9, "RST echoes the type")
        for r in rsts where r.header.dstPort != 206 { XCTAssertEqual(r.header.srcCID, hostCID) }
        XCTAssertFalse(ca.reset)
        // Malformed ones are counted as errors: 1 (spoofed CID), 2, 3, 4, 5, 9 (short), 10.
        XCTAssertEqual(a.counter(.errors, 1) - errorsBefore, 7)
        // Nothing reached the host listener (no connection was made for any of them).
        var p = pollfd(fd: lfd, events: Int16(POLLIN), revents: 0)
        XCTAssertEqual(poll(&p, 1, 0), 0)

        // The established connection still works both ways.
        let up = pattern(300_000, seed: 3)
        let reader = Background { try Host.readExactly(ha, up.count) }
        try da.send(ca, up)
        XCTAssertTrue(try reader.wait() == up)
        try Host.writeAll(ha, Array("still here".utf8))
        XCTAssertEqual(try receive(da, ca, count: 10), Array("still here".utf8))

        // The other export on the same poller works.
        let lb = try listen(b.portPath(6000))
        let (cb, hb) = try open(db, lb, port: 6000, localPort: 100)
        try db.send(cb, Array("other".utf8))
        XCTAssertEqual(try Host.readExactly(hb, 5), Array("other".utf8))
        try Host.writeAll(hb, Array("fine".utf8))
        XCTAssertEqual(try receive(db, cb, count: 4), Array("fine".utf8))
        XCTAssertEqual(b.counter(.errors, 1), 0)
    }

    func testHeaderSplitOverDescriptorsIsAccepted() throws {
        // virtio 1.3, 2.6.4: the device must not assume a particular descriptor layout.
        let s = try serve(cid: 3)
        let d = try guest(s)
        let lfd = try listen(s.portPath(6100))
        let (c, h) = try open(d, lfd, port: 6100, localPort: 110)
        var hdr = d.header(c, .rw)
        let payload = pattern(3000, seed: 4)
        hdr.len = UInt32(payload.count)
        let bytes = hdr.bytes + payload
        // 7 + 30 + 7 + 1000 + 1 + 1999 bytes in six descriptors.
        var bufs: [DriverVirtqueue.Buffer] = []
        var off = 0
        for n in [7, 30, 7, 1000, 1, 1999] {
            let g = d.ram.allocate(UInt64(n))
            d.ram.write(g, Array(bytes[off..<(off + n)]))
            bufs.append(.init(gpa: g, length: UInt32(n), writable: false))
            off += n
        }
        d.txq.add(bufs)
        c.txCnt &+= UInt32(payload.count)
        // And once more through an indirect table.
        var hdr2 = d.header(c, .rw)
        hdr2.len = 5
        let b2 = hdr2.bytes + Array("hello".utf8)
        let g1 = d.ram.allocate(20), g2 = d.ram.allocate(UInt64(b2.count - 20))
        d.ram.write(g1, Array(b2[0..<20]))
        d.ram.write(g2, Array(b2[20...]))
        d.txq.add([.init(gpa: g1, length: 20, writable: false), .init(gpa: g2, length: UInt32(b2.count - 20), writable: false)],
                  indirect: true)
        c.txCnt &+= 5
        try barrier(d, c)   // its kick makes the device look at the ring
        XCTAssertEqual(try Host.readExactly(h, 3005), payload + Array("hello".utf8))
        XCTAssertFalse(c.reset)
    }

    /// After the device told the guest RST for a connection, the guest has forgotten it; the device must
    /// forget it too: close the host socket and forward nothing more.
    private func expectResetOnBothSides(_ d: VsockTestDriver, _ c: VsockTestDriver.Conn, _ h: Int32, site: String) throws {
        XCTAssertTrue(d.wait { c.reset }, "the device resets the connection")
        try barrier(d)
        if !Host.readable(h, timeout: 0) {
            // Evidence: the bridge is still up. Host bytes still reach the guest, on a connection it was told is reset.
            try Host.writeAll(h, Array("zombie".utf8))
            let late = packets(d, where: { $0.header.dstPort == c.localPort && $0.header.srcPort == c.peerPort && $0.header.op == Op.rw },
                               until: { !$0.isEmpty })
            return XCTFail("regression: \(site) sends RST for an existing connection (queueReset) but keeps it in `connections`: "
                          + "after the RST the host socket is still open, and \(late.count) RW packet(s) carrying "
                          + "\(late.map(\.payload.count).reduce(0, +)) host bytes still reached the guest")
        }
        let (data, end) = try Host.readToEnd(h)
        XCTAssertEqual(data, [])
        XCTAssertEqual(end, .eof)
    }

    func testMalformedPacketOnEstablishedConnectionEndsItOnBothSides() throws {
        let s = try serve(cid: 3)
        let d = try guest(s)
        let lfd = try listen(s.portPath(6200))
        let (c, h) = try open(d, lfd, port: 6200, localPort: 120)
        // RW claiming more than it carries, on the established connection's own ports.
        try d.sendPacket(d.header(c, .rw), pattern(10, seed: 5), lengthOverride: 500)
        try expectResetOnBothSides(d, c, h, site: "VsockEngine.handleGuestPacket (Sources/Vsock/VsockEngine.swift:154-157, malformed header)")
    }

    func testRequestForExistingConnectionDoesNotLeaveHalfOpenBridge() throws {
        let s = try serve(cid: 3)
        let d = try guest(s)
        let lfd = try listen(s.portPath(6300))
        let (c, h) = try open(d, lfd, port: 6300, localPort: 130)
        // The same REQUEST again (a confused or hostile guest): answered by RST.
        try d.sendPacket(rawHeader(d, srcPort: 130, dstPort: 6300, op: Op.request))
        var p = pollfd(fd: lfd, events: Int16(POLLIN), revents: 0)
        XCTAssertEqual(poll(&p, 1, 0), 0, "no second host connection")
        try expectResetOnBothSides(d, c, h, site: "VsockEngine.handleGuestPacket (Sources/Vsock/VsockEngine.swift:183, REQUEST on an existing connection)")
    }

    func testResponseOnEstablishedConnectionDoesNotLeaveHalfOpenBridge() throws {
        let s = try serve(cid: 3)
        let d = try guest(s)
        let lfd = try listen(s.portPath(6400))
        let (c, h) = try open(d, lfd, port: 6400, localPort: 140)
        try d.sendPacket(d.header(c, .response))
        try expectResetOnBothSides(d, c, h, site: "VsockEngine.handleGuestPacket (Sources/Vsock/VsockEngine.swift:186, RESPONSE on an established connection)")
    }

    func testRWAfterGuestShutdownSendDoesNotLeaveHalfOpenBridge() throws {
        let s = try serve(cid: 3)
        let d = try guest(s)
        let lfd = try listen(s.portPath(6500))
        let (c, h) = try open(d, lfd, port: 6500, localPort: 150)
        try d.shutdown(c, flags: Shutdown.send)
        XCTAssertEqual(try Host.readToEnd(h).end, .eof, "host sees the guest's half-close")
        // Data after SHUTDOWN(SEND) breaks the guest's own promise: RST.
        try d.sendPacket(d.header(c, .rw), [1])
        XCTAssertTrue(d.wait { c.reset })
        try barrier(d)
        // The host already read EOF for the guest's direction; the device must have closed the socket
        // entirely: a write from the host now fails instead of going to a connection the guest dropped.
        let n = Array("late".utf8).withUnsafeBytes { send(h, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if n > 0 {
            let late = packets(d, where: { $0.header.dstPort == 150 && $0.header.op == Op.rw }, until: { !$0.isEmpty })
            return XCTFail("regression: VsockEngine.handleGuestPacket (Sources/Vsock/VsockEngine.swift:193, RW after SHUTDOWN(SEND)) sends RST "
                          + "but keeps the connection: the host could still write \(n) bytes and \(late.count) RW packet(s) reached the guest")
        }
        XCTAssertEqual(errno, EPIPE)
    }
}
