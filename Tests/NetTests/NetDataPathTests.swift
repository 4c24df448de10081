import Net
import VhostUserTestSupport
import XCTest

/// Mergeable rx buffers, checksum offload, multiqueue.
final class NetDataPathTests: NetTestCase {
    func testOfferedFeatures() {
        let want: UInt64 = 1 << 32 | 1 << 29 | 1 << 28 | 1 << 15 | 1 << 0 | 1 << 1 | 1 << 22 | 1 << 7 | 1 << 8 | 1 << 11 | 1 << 12
            | 1 << 3 | 1 << 10 | 1 << 14
        XCTAssertEqual(NetDevice.features, want,
                       "VERSION_1 EVENT_IDX INDIRECT MRG_RXBUF CSUM GUEST_CSUM MQ GUEST_TSO4/6 HOST_TSO4/6 MTU GUEST/HOST_UFO, nothing else")
    }

    func testMergeableBuffersReassemble() throws {
        let sw = makeSwitch()
        let a = try serve("a", switch: sw), b = try serve("b", switch: sw)
        let ga = try guest(a), gb = try guest(b, features: NetTestDriver.fMrgRxbuf)
        gb.postRx(32, size: 256)
        let frame = TestFrame.ethernet(dst: mac(2), src: mac(1), type: 0x88b5, payload: pattern(1400, seed: 20))
        ga.send(frame)
        let got = try XCTUnwrap(gb.receive())
        XCTAssertEqual(got.buffers, 6, "12 + 1414 bytes in 256-byte buffers")
        XCTAssertEqual(got.header.numBuffers, 6)
        XCTAssertEqual(got.frame, frame)
        // A second frame starts in the next buffer.
        let small = TestFrame.ethernet(dst: mac(2), src: mac(1), type: 0x88b5, payload: pattern(100, seed: 21))
        ga.send(small)
        let got2 = try XCTUnwrap(gb.receive())
        XCTAssertEqual(got2.header.numBuffers, 1)
        XCTAssertEqual(got2.frame, small)
    }

    func testWithoutMergeableAFrameLargerThanTheBufferIsDroppedAndCounted() throws {
        let sw = makeSwitch()
        let a = try serve("a", switch: sw), b = try serve("b", switch: sw)
        let ga = try guest(a), gb = try guest(b, features: 0)
        gb.postRx(1, size: 256)
        let big = TestFrame.ethernet(dst: mac(2), src: mac(1), type: 0x88b5, payload: pattern(1000, seed: 22))
        ga.send(big)
        XCTAssertTrue(ga.waitTxDone())
        XCTAssertTrue(eventually { b.counter(.dropRxTooSmall) == 1 })
        // The small buffer was put back and takes the next frame that fits.
        let small = TestFrame.ethernet(dst: mac(2), src: mac(1), type: 0x88b5, payload: pattern(200, seed: 23))
        ga.send(small)
        let got = try XCTUnwrap(gb.receive())
        XCTAssertEqual(got.frame, small)
        XCTAssertEqual(got.header.numBuffers, 1)
    }

    func testPartialChecksumIsCompletedForAReceiverWithoutGuestCsum() throws {
        let sw = makeSwitch()
        let a = try serve("a", switch: sw), b = try serve("b", switch: sw)
        let ga = try guest(a, features: NetTestDriver.fMrgRxbuf | NetTestDriver.fCsum)
        let gb = try guest(b, features: NetTestDriver.fMrgRxbuf)
        gb.postRx(8, size: 256)
        // An odd payload length, over several rx buffers, with the sender's header and frame in separate buffers.
        let frame = TestFrame.udpPartial(dst: mac(2), src: mac(1), payload: pattern(777, seed: 24))
        XCTAssertFalse(TestFrame.udpChecksumValid(frame), "the driver left it partial")
        ga.send(frame, header: .init(flags: 1, csumStart: 34, csumOffset: 6), split: true)
        let got = try XCTUnwrap(gb.receive())
        XCTAssertEqual(got.header.flags, 0)
        XCTAssertTrue(TestFrame.udpChecksumValid(got.frame), "completed in software")
        XCTAssertEqual(Array(got.frame[0..<40]), Array(frame[0..<40]))
        XCTAssertEqual(Array(got.frame[42...]), Array(frame[42...]), "only the checksum field changed")
    }

    func testPartialChecksumIsPassedToAReceiverWithGuestCsum() throws {
        let sw = makeSwitch()
        let a = try serve("a", switch: sw), b = try serve("b", switch: sw)
        let ga = try guest(a, features: NetTestDriver.fMrgRxbuf | NetTestDriver.fCsum)
        let gb = try guest(b, features: NetTestDriver.fMrgRxbuf | NetTestDriver.fGuestCsum)
        gb.postRx(8)
        let frame = TestFrame.udpPartial(dst: mac(2), src: mac(1), payload: pattern(500, seed: 25))
        ga.send(frame, header: .init(flags: 1, csumStart: 34, csumOffset: 6))
        let got = try XCTUnwrap(gb.receive())
        XCTAssertEqual(got.header.flags, 1, "NEEDS_CSUM passed on")
        XCTAssertEqual(got.header.csumStart, 34)
        XCTAssertEqual(got.header.csumOffset, 6)
        XCTAssertEqual(got.frame, frame, "bytes untouched")
    }

    func testMultiqueueSpreadsFlowsAndFollowsVringEnable() throws {
        let sw = makeSwitch()
        let a = try serve("a", switch: sw)
        let b = try serve("b", switch: sw, options: "num-queues=2")
        let ga = try guest(a)
        let gb = try guest(b, features: NetTestDriver.fMrgRxbuf | NetTestDriver.fMQ, pairs: 2)
        gb.postRx(64, pair: 0)
        gb.postRx(64, pair: 1)
        // 32 flows (UDP source ports), 2 frames each.
        var sent: [[UInt8]] = []
        for i in 0..<64 {
            var f = TestFrame.udpPartial(dst: mac(2), src: mac(1), payload: pattern(40, seed: UInt64(i)))
            f[35] = UInt8(i % 32)
            sent.append(f)
            ga.send(f)
        }
        XCTAssertTrue(ga.waitTxDone())
        XCTAssertTrue(eventually { b.counter(.rxFrames) == 64 })
        var perQueue = [0, 0]
        var got: [[UInt8]] = []
        for q in 0..<2 {
            while perQueue[0] + perQueue[1] < 64, let r = gb.receive(pair: q, timeout: 0.2) {
                perQueue[q] += 1
                got.append(r.frame)
            }
        }
        XCTAssertEqual(perQueue[0] + perQueue[1], 64)
        XCTAssertGreaterThan(perQueue[0], 0, "\(perQueue)")
        XCTAssertGreaterThan(perQueue[1], 0, "\(perQueue)")
        XCTAssertEqual(Set(got), Set(sent))
        // The guest turns pair 1 off (SET_VRING_ENABLE 0 on its rx ring): every flow lands on rx 0.
        try gb.frontend.command(.setVringEnable, payload: gb.frontend.vringState(2, 0))
        for i in 0..<16 {
            var f = TestFrame.udpPartial(dst: mac(2), src: mac(1), payload: pattern(40, seed: UInt64(100 + i)))
            f[35] = UInt8(i)
            ga.send(f)
            XCTAssertEqual(gb.receive(pair: 0)?.frame, f)
        }
    }
}

/// TSO: a GSO frame reaches a driver with GUEST_TSO4 whole, and is cut into MSS segments for one without.
final class NetSegmentationTests: NetTestCase {
    func testTSOFrameIsPassedWholeToAReceiverWithGuestTSO() throws {
        let sw = makeSwitch()
        let a = try serve("a", switch: sw), b = try serve("b", switch: sw)
        let ga = try guest(a, features: NetTestDriver.fMrgRxbuf | NetTestDriver.fCsum | NetTestDriver.fHostTSO4)
        let gb = try guest(b, features: NetTestDriver.fMrgRxbuf | NetTestDriver.fGuestCsum | NetTestDriver.fGuestTSO4)
        gb.postRx(64, size: 1536)
        let frame = TestFrame.tcpPartial(dst: mac(2), src: mac(1), seq: 1000, flags: 0x18, payload: pattern(20000, seed: 50))
        ga.send(frame, header: .init(flags: 1, gsoType: 1, hdrLen: 54, gsoSize: 1448, csumStart: 34, csumOffset: 16))
        let got = try XCTUnwrap(gb.receive())
        XCTAssertEqual(got.frame, frame)
        XCTAssertEqual(got.header.gsoType, 1)
        XCTAssertEqual(got.header.gsoSize, 1448)
        XCTAssertEqual(got.header.hdrLen, 54)
        XCTAssertEqual(got.header.flags, 1)
        XCTAssertEqual(got.header.csumStart, 34)
        XCTAssertEqual(got.header.csumOffset, 16)
        XCTAssertEqual(Int(got.header.numBuffers), got.buffers)
        XCTAssertEqual(b.counter(.segmented), 0)
    }

    func testTSOFrameIsSegmentedForAReceiverWithout() throws {
        let sw = makeSwitch()
        let a = try serve("a", switch: sw), b = try serve("b", switch: sw)
        let ga = try guest(a, features: NetTestDriver.fMrgRxbuf | NetTestDriver.fCsum | NetTestDriver.fHostTSO4)
        let gb = try guest(b, features: NetTestDriver.fMrgRxbuf)
        gb.postRx(64)
        let payload = pattern(3500, seed: 51)
        let frame = TestFrame.tcpPartial(dst: mac(2), src: mac(1), seq: 0xffff_fc00, flags: 0x19, payload: payload)
        ga.send(frame, header: .init(flags: 1, gsoType: 1, hdrLen: 54, gsoSize: 1000, csumStart: 34, csumOffset: 16), split: true)
        var joined: [UInt8] = []
        for i in 0..<4 {
            let got = try XCTUnwrap(gb.receive(), "segment \(i)")
            let f = got.frame
            XCTAssertEqual(got.header.gsoType, 0)
            XCTAssertEqual(got.header.flags, 0)
            XCTAssertEqual(f.count, 54 + (i < 3 ? 1000 : 500))
            XCTAssertTrue(TestFrame.tcpChecksumsValid(f), "segment \(i): IP and TCP checksums complete")
            let seq = UInt32(f[38]) << 24 | UInt32(f[39]) << 16 | UInt32(f[40]) << 8 | UInt32(f[41])
            XCTAssertEqual(seq, 0xffff_fc00 &+ UInt32(1000 * i), "sequence numbers advance (and wrap)")
            XCTAssertEqual(f[47], i < 3 ? 0x10 : 0x19, "FIN and PSH on the last segment only")
            XCTAssertEqual(Int(f[18]) << 8 | Int(f[19]), 0x1234 + i, "IPv4 ids advance")
            XCTAssertEqual(Array(f[0..<14]), Array(frame[0..<14]))
            joined += f[54...]
        }
        XCTAssertEqual(joined, payload)
        XCTAssertEqual(b.counter(.segmented), 1)
        XCTAssertEqual(b.counter(.rxFrames), 4)
    }

    /// A UFO datagram (IPv4, DF clear) from a driver with HOST_UFO.
    func ufoFrame(_ payload: [UInt8]) -> [UInt8] {
        var f = TestFrame.udpPartial(dst: mac(2), src: mac(1), payload: payload)
        f[20] = 0   // DF off: the datagram may be fragmented
        var ip = Array(f[14..<34])
        ip[10] = 0; ip[11] = 0
        let s = TestFrame.fold(TestFrame.sum16(ip))
        f[24] = UInt8(s >> 8); f[25] = UInt8(s & 0xff)
        return f
    }

    func testUFODatagramIsPassedWholeToAReceiverWithGuestUFO() throws {
        let sw = makeSwitch()
        let a = try serve("a", switch: sw), b = try serve("b", switch: sw)
        let ga = try guest(a, features: NetTestDriver.fMrgRxbuf | NetTestDriver.fCsum | NetTestDriver.fHostUFO)
        let gb = try guest(b, features: NetTestDriver.fMrgRxbuf | NetTestDriver.fGuestCsum | NetTestDriver.fGuestUFO)
        gb.postRx(16, size: 1536)
        let frame = ufoFrame(pattern(4000, seed: 70))
        ga.send(frame, header: .init(flags: 1, gsoType: 3, hdrLen: 42, gsoSize: 1480, csumStart: 34, csumOffset: 6))
        let got = try XCTUnwrap(gb.receive())
        XCTAssertEqual(got.frame, frame)
        XCTAssertEqual(got.header.gsoType, 3)
        XCTAssertEqual(got.header.gsoSize, 1480)
        XCTAssertEqual(got.header.flags, 1)
        XCTAssertEqual(b.counter(.segmented), 0)
    }

    func testUFODatagramIsFragmentedForAReceiverWithout() throws {
        let sw = makeSwitch()
        let a = try serve("a", switch: sw), b = try serve("b", switch: sw)
        let ga = try guest(a, features: NetTestDriver.fMrgRxbuf | NetTestDriver.fCsum | NetTestDriver.fHostUFO)
        let gb = try guest(b, features: NetTestDriver.fMrgRxbuf)
        gb.postRx(16)
        let payload = pattern(3000, seed: 71)
        let frame = ufoFrame(payload)
        // gso_size 1483: fragments carry 1480 bytes (a multiple of 8) but the last.
        ga.send(frame, header: .init(flags: 1, gsoType: 3, hdrLen: 42, gsoSize: 1483, csumStart: 34, csumOffset: 6), split: true)
        var datagram: [UInt8] = []
        for i in 0..<3 {
            let f = try XCTUnwrap(gb.receive(), "fragment \(i)").frame
            let ip = Array(f[14..<34])
            XCTAssertEqual(TestFrame.fold(TestFrame.sum16(ip)), 0, "fragment \(i): IPv4 header checksum")
            XCTAssertEqual(Int(ip[2]) << 8 | Int(ip[3]), f.count - 14, "fragment \(i): total length")
            XCTAssertEqual(Array(ip[4..<6]), [0, 1], "the datagram's id on every fragment")
            let fragField = Int(ip[6]) << 8 | Int(ip[7])
            XCTAssertEqual(fragField & 0x1fff, 1480 * i / 8, "fragment \(i): offset")
            XCTAssertEqual(fragField & 0x2000 != 0, i < 2, "fragment \(i): more fragments")
            XCTAssertEqual(f.count - 34, i < 2 ? 1480 : 3008 - 2960)
            XCTAssertEqual(Array(f[0..<14]), Array(frame[0..<14]))
            datagram += f[34...]
        }
        XCTAssertEqual(Array(datagram[8...]), payload)
        XCTAssertTrue(TestFrame.udpChecksumValid(Array(frame[0..<34]) + datagram), "UDP checksum completed over the datagram")
        XCTAssertEqual(b.counter(.segmented), 1)
        XCTAssertEqual(b.counter(.rxFrames), 3)
        // DF set: the datagram cannot be fragmented, and is dropped and counted.
        ga.send(TestFrame.udpPartial(dst: mac(2), src: mac(1), payload: payload),
                header: .init(flags: 1, gsoType: 3, hdrLen: 42, gsoSize: 1480, csumStart: 34, csumOffset: 6))
        XCTAssertTrue(ga.waitTxDone())
        XCTAssertTrue(eventually { b.counter(.dropUnsegmentable) == 1 })
    }

    func testIPv6UFODatagramIsFragmentedWithAFragmentHeader() throws {
        let sw = makeSwitch()
        let a = try serve("a", switch: sw), b = try serve("b", switch: sw)
        let ga = try guest(a, features: NetTestDriver.fMrgRxbuf | NetTestDriver.fCsum | NetTestDriver.fHostUFO)
        let gb = try guest(b, features: NetTestDriver.fMrgRxbuf)
        gb.postRx(16)
        let payload = pattern(2500, seed: 72)
        let src: [UInt8] = [0xfe, 0x80] + Array(repeating: 0, count: 13) + [1]
        let dst: [UInt8] = [0xfe, 0x80] + Array(repeating: 0, count: 13) + [2]
        let udpLen = 8 + payload.count
        let pseudo = TestFrame.sum16(src + dst + [0, 0, UInt8(udpLen >> 8), UInt8(udpLen & 0xff), 0, 0, 0, 17])
        var p = pseudo
        while p >> 16 != 0 { p = (p & 0xffff) + (p >> 16) }
        let ip6: [UInt8] = [0x60, 0, 0, 0, UInt8(udpLen >> 8), UInt8(udpLen & 0xff), 17, 64] + src + dst
        let udp: [UInt8] = [0x30, 0x39, 0x30, 0x3a, UInt8(udpLen >> 8), UInt8(udpLen & 0xff), UInt8(p >> 8), UInt8(p & 0xff)]
        let frame = TestFrame.ethernet(dst: mac(2), src: mac(1), type: 0x86dd, payload: ip6 + udp + payload)
        ga.send(frame, header: .init(flags: 1, gsoType: 3, hdrLen: 62, gsoSize: 1448, csumStart: 54, csumOffset: 6))
        var datagram: [UInt8] = []
        var id: [UInt8]?
        for i in 0..<2 {
            let f = try XCTUnwrap(gb.receive(), "fragment \(i)").frame
            XCTAssertEqual(f[20], 44, "next header: fragment")
            XCTAssertEqual(Int(f[18]) << 8 | Int(f[19]), f.count - 54, "payload length counts the fragment header")
            XCTAssertEqual(f[54], 17, "the fragment header's next header: UDP")
            let field = Int(f[56]) << 8 | Int(f[57])
            XCTAssertEqual(field >> 3, 1448 * i / 8, "fragment \(i): offset")
            XCTAssertEqual(field & 1 != 0, i == 0, "fragment \(i): more fragments")
            if let id { XCTAssertEqual(Array(f[58..<62]), id, "one id for the datagram") } else { id = Array(f[58..<62]) }
            datagram += f[62...]
        }
        XCTAssertEqual(datagram.count, udpLen)
        XCTAssertEqual(Array(datagram[8...]), payload)
        XCTAssertEqual(TestFrame.fold(pseudo + TestFrame.sum16(datagram)), 0, "UDP checksum completed")
    }

    func testNonGSOFrameOverTheMTUIsOversizedEvenWithTSO() throws {
        let sw = makeSwitch()
        let a = try serve("a", switch: sw)
        let ga = try guest(a, features: NetTestDriver.fMrgRxbuf | NetTestDriver.fCsum | NetTestDriver.fHostTSO4)
        ga.send(TestFrame.ethernet(dst: mac(2), src: mac(1), type: 0x88b5, payload: pattern(3000, seed: 52)))
        XCTAssertTrue(ga.waitTxDone())
        XCTAssertEqual(a.counter(.dropOversized), 1)
    }

    /// QEMU's host_mtu: with VIRTIO_NET_F_MTU and PROTOCOL_F_NET_MTU the frontend sends the MTU it gave the guest
    /// (NET_SET_MTU); vdevd takes one up to the export's mtu=, refuses a larger one with a reason, and from then
    /// on drops frames over the MTU taken, on rings already running.
    func testFrontendMTUUpToTheExportsIsTakenAndEnforced() throws {
        let sw = makeSwitch()
        let a = try serve("a", switch: sw, options: "mtu=2000"), b = try serve("b", switch: sw)
        let netMTU: UInt64 = 1 << 4
        let ga = try guest(a, features: NetTestDriver.fMrgRxbuf | 1 << 3, extraProtocolFeatures: netMTU), gb = try guest(b)
        XCTAssertNotEqual(try ga.frontend.getU64(.getProtocolFeatures) & netMTU, 0)
        XCTAssertNotEqual(try ga.frontend.command(.netSetMTU, payload: ga.frontend.u64Payload(9000)), 0, "over mtu=2000")
        XCTAssertTrue(logs.contains("NET_SET_MTU refused: MTU 9000 is outside 68...2000"), "\(logs.all.suffix(3))")
        XCTAssertNotEqual(try ga.frontend.command(.netSetMTU, payload: ga.frontend.u64Payload(67)), 0, "under 68")
        XCTAssertEqual(try ga.frontend.command(.netSetMTU, payload: ga.frontend.u64Payload(1400)), 0)
        XCTAssertEqual(a.device.linkMTU.value, 1400)

        gb.postRx(4)
        // MTU plus 18 (Ethernet header and a tag's room), as for mtu= itself.
        let fits = TestFrame.ethernet(dst: mac(2), src: mac(1), type: 0x88b5, payload: pattern(1404, seed: 60))
        let over = TestFrame.ethernet(dst: mac(2), src: mac(1), type: 0x88b5, payload: pattern(1405, seed: 61))
        ga.send(over)
        ga.send(fits)
        XCTAssertTrue(ga.waitTxDone())
        XCTAssertEqual(gb.receive()?.frame, fits)
        XCTAssertEqual(a.counter(.dropOversized), 1)
        XCTAssertEqual(a.counter(.txFrames), 1)
    }
}
