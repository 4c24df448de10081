import Net
import VhostUserTestSupport
import XCTest

/// Mergeable rx buffers, checksum offload, multiqueue.
final class NetDataPathTests: NetTestCase {
    func testOfferedFeatures() {
        let want: UInt64 = 1 << 32 | 1 << 29 | 1 << 28 | 1 << 15 | 1 << 0 | 1 << 1 | 1 << 22
        XCTAssertEqual(NetDevice.features, want, "VERSION_1 EVENT_IDX INDIRECT MRG_RXBUF CSUM GUEST_CSUM MQ, nothing else")
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
