#if canImport(Glibc)
import Glibc
#endif
import VhostUserTestSupport
import Vsock
import XCTest

/// Guest-to-guest: exports sharing a group relay packets between their guests by CID.
final class VsockSiblingTests: VsockTestCase {
    func testSiblingsInOneGroupConnectAndMoveDataBothWays() throws {
        _ = try pollerGroup(count: 2)
        let g = uniqueGroup("g")
        let s3 = try serve(id: "g3", cid: 3, options: "groups=\(g)")
        let s4 = try serve(id: "g4", cid: 4, options: "groups=other+\(g)")
        let d3 = try guest(s3)
        let d4 = try guest(s4)

        // Guest 3 listens on port 700 (accepts on its own thread); guest 4 connects to CID 3 port 700.
        let acceptor = Background { try d3.accept(port: 700, timeout: 20) }
        guard let c4 = try d4.connect(port: 700, cid: 3, localPort: 5555) else { return XCTFail("sibling connect reset") }
        let c3 = try acceptor.wait()
        XCTAssertEqual(c3.peerCID, 4, "the REQUEST came from CID 4")
        XCTAssertEqual(c3.peerPort, 5555)
        XCTAssertEqual(c4.peerBufAlloc, d3.bufAlloc, "guest 3's own buf_alloc, relayed unchanged")

        // 4 -> 3 and 3 -> 4, each guest on its own thread (credit flows between the guests).
        let a = pattern(1 << 20, seed: 61), b = pattern(700_000, seed: 62)
        let t3 = Background { () throws -> [UInt8] in
            try d3.send(c3, b, timeout: 60)
            guard d3.wait(timeout: 60, { c3.received.count >= a.count }) else { throw TestSupportError("guest 3 got \(c3.received.count)") }
            return c3.received
        }
        try d4.send(c4, a, timeout: 60)
        XCTAssertTrue(d4.wait(timeout: 60) { c4.received.count >= b.count })
        let got3 = try t3.wait(timeout: 90)
        XCTAssertEqual(checksum(got3), checksum(a))
        XCTAssertTrue(got3 == a)
        XCTAssertEqual(checksum(c4.received), checksum(b))
        XCTAssertTrue(c4.received == b)

        // Close from 4: SHUTDOWN(3) reaches guest 3 as is; guest 3 answers RST, which reaches guest 4.
        try d4.shutdown(c4, flags: Shutdown.rcv | Shutdown.send)
        XCTAssertTrue(d3.wait { c3.peerShutdown == Shutdown.rcv | Shutdown.send })
        try d3.reset(c3)
        XCTAssertTrue(d4.wait { c4.reset })
        XCTAssertEqual(s3.counter(.errors, 1), 0)
        XCTAssertEqual(s4.counter(.errors, 1), 0)
        // Both exports were put on one poller (of two), the one the registry holds for the group.
        let p3 = logs.all.filter { $0.contains("export=g3") && $0.contains("queue 0 started on poller") }
        let p4 = logs.all.filter { $0.contains("export=g4") && $0.contains("queue 0 started on poller") }
        XCTAssertEqual(p3.count, 1)
        XCTAssertEqual(p4.count, 1)
        let want = "started on poller \(VsockRegistry.shared.poller(forGroups: [g]) ?? -1) "
        XCTAssertTrue(p3.first?.contains(want) ?? false, "\(p3)")
        XCTAssertTrue(p4.first?.contains(want) ?? false, "\(p4)")
    }

    func testSiblingSeqpacketKeepsBoundaries() throws {
        let g = uniqueGroup("sp")
        let s3 = try serve(id: "p3", cid: 3, options: "groups=\(g)")
        let s4 = try serve(id: "p4", cid: 4, options: "groups=\(g)")
        let d3 = try guest(s3)
        let d4 = try guest(s4)
        let acceptor = Background { try d3.accept(port: 701, timeout: 20) }
        guard let c4 = try d4.connect(port: 701, cid: 3, localPort: 5556, type: SockType.seqpacket) else { return XCTFail("reset") }
        let c3 = try acceptor.wait()
        XCTAssertEqual(c3.type, SockType.seqpacket)
        let msgs = [pattern(1, seed: 63), pattern(9000, seed: 64), pattern(50_000, seed: 65)]
        for m in msgs { try d4.send(c4, m, eom: true) }
        XCTAssertTrue(d3.wait { c3.messages.count == msgs.count })
        XCTAssertEqual(c3.messages, msgs, "a relayed message larger than an rx buffer is split, EOM on the last part")
    }

    func testExportOutsideTheGroupGetsRST() throws {
        let g = uniqueGroup("g")
        let s3 = try serve(id: "o3", cid: 3, options: "groups=\(g)")
        let s5 = try serve(id: "o5", cid: 5, options: "groups=\(uniqueGroup("h"))")
        let s6 = try serve(id: "o6", cid: 6)
        let d3 = try guest(s3)
        let d5 = try guest(s5)
        let d6 = try guest(s6)
        for (d, port) in [(d5, UInt32(6000)), (d6, UInt32(6001))] {
            try d.sendPacket(rawHeader(d, dstCID: 3, srcPort: port, dstPort: 700, op: Op.request))
            let got = packets(d, where: { $0.header.dstPort == port }, until: { !$0.isEmpty })
            guard let p = got.first else { return XCTFail("no answer") }
            XCTAssertEqual(p.header.op, Op.rst)
            XCTAssertEqual(p.header.srcCID, 3)
            XCTAssertEqual(p.header.srcPort, 700)
        }
        // Nothing reached guest 3.
        try barrier(d3)
        XCTAssertTrue(d3.unmatched.filter { $0.header.op == Op.request }.isEmpty)
        // And a guest cannot reach itself through the relay.
        try d3.sendPacket(rawHeader(d3, dstCID: 3, srcPort: 6002, dstPort: 700, op: Op.request))
        let got = packets(d3, where: { $0.header.dstPort == 6002 || $0.header.op == Op.request }, until: { !$0.isEmpty })
        XCTAssertEqual(got.map(\.header.op), [Op.rst])
    }

    func testSiblingRelayCannotSpoofSourceCID() throws {
        let g = uniqueGroup("g")
        let s3 = try serve(id: "x3", cid: 3, options: "groups=\(g)")
        let s4 = try serve(id: "x4", cid: 4, options: "groups=\(g)")
        let d3 = try guest(s3)
        let d4 = try guest(s4)
        var h = rawHeader(d4, dstCID: 3, srcPort: 1, dstPort: 700, op: Op.request)
        h.srcCID = 2   // pretends to be the host
        try d4.sendPacket(h)
        try barrier(d4)
        try barrier(d3)
        XCTAssertTrue(d3.unmatched.filter { $0.header.op == Op.request }.isEmpty, "nothing relayed")
        XCTAssertEqual(s4.counter(.errors, 1), 1)
    }
}

/// A relayed packet larger than any Linux guest sends (64 KiB) is refused with RST, not copied.
final class VsockRelayLimitTests: VsockTestCase {
    func testRelayedPacketOver64KiBGetsReset() throws {
        let g = uniqueGroup("big")
        let s3 = try serve(id: "b3", cid: 3, options: "groups=\(g)")
        let s4 = try serve(id: "b4", cid: 4, options: "groups=\(g)")
        let d3 = try guest(s3)
        let d4 = try guest(s4)
        let acceptor = Background { try d3.accept(port: 701, timeout: 20) }
        guard let c4 = try d4.connect(port: 701, cid: 3, localPort: 6666) else { return XCTFail("sibling connect reset") }
        let c3 = try acceptor.wait()

        // One RW packet of 64 KiB + 1 byte, in two buffers (the driver's own pool holds 64 KiB per packet).
        var h = d4.header(c4, .rw)
        h.len = 65537
        let hg = d4.ram.allocate(44), p1 = d4.ram.allocate(65536), p2 = d4.ram.allocate(1)
        d4.ram.write(hg, h.bytes)
        d4.txq.add([.init(gpa: hg, length: 44, writable: false), .init(gpa: p1, length: 65536, writable: false),
                    .init(gpa: p2, length: 1, writable: false)])
        d4.kickTx()
        XCTAssertTrue(d4.wait { c4.reset }, "the sender gets RST")
        XCTAssertEqual(c3.totalReceived, 0, "nothing was relayed")
        XCTAssertEqual(s4.counter(.errors, 1), 1)
        _ = s3
    }
}
