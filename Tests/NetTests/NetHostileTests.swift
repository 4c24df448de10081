import Net
import VhostUserTestSupport
import XCTest

/// A guest sending bad frames or breaking its rings loses those frames or that queue, nothing else.
final class NetHostileTests: NetTestCase {
    func testMalformedHeadersRuntsAndOversizedFramesAreDroppedAndCounted() throws {
        let sw = makeSwitch()
        let a = try serve("a", switch: sw), b = try serve("b", switch: sw)
        let ga = try guest(a), gb = try guest(b)
        gb.postRx(16)
        let ok = TestFrame.ethernet(dst: mac(2), src: mac(1), type: 0x88b5, payload: pattern(100, seed: 30))
        ga.send(ok, header: .init(flags: 0x80))                               // unknown flag
        ga.send(ok, header: .init(flags: 1, csumStart: 34, csumOffset: 6))   // NEEDS_CSUM without CSUM negotiated
        ga.send(ok, header: .init(gsoType: 1, gsoSize: 1000))                 // TSO without HOST_TSO4
        ga.send(ok, header: .init(gsoType: 9))                                // no such GSO type
        ga.send(Array(ok.prefix(10)))                                          // runt: no Ethernet header
        let maxOK = TestFrame.ethernet(dst: mac(2), src: mac(1), type: 0x88b5, payload: pattern(1518 - 14, seed: 31))
        ga.send(maxOK + [0])                                                   // one byte over MTU 1500 + 18
        // A chain shorter than the virtio_net_hdr itself.
        let g = ga.ram.allocate(8)
        ga.tx[0].add([.init(gpa: g, length: 5, writable: false)])
        kick(ga.txKick[0])
        ga.send(maxOK)
        XCTAssertEqual(gb.receive()?.frame, maxOK, "the largest frame the MTU allows goes through, and first")
        XCTAssertTrue(ga.waitTxDone(), "every chain, dropped or not, was given back")
        XCTAssertEqual(a.counter(.dropBadHeader), 5)
        XCTAssertEqual(a.counter(.dropRunt), 1)
        XCTAssertEqual(a.counter(.dropOversized), 1)
        XCTAssertEqual(a.counter(.txFrames), 1)
    }

    func testHeadOfferedTwiceStopsOnlyThatTxQueue() throws {
        let sw = makeSwitch()
        let a = try serve("a", switch: sw), b = try serve("b", switch: sw), c = try serve("c", switch: sw)
        let ga = try guest(a), gb = try guest(b), gc = try guest(c)
        ga.postRx(4)
        gc.postRx(4)
        // Two avail entries naming one head, published together.
        let frame = TestFrame.ethernet(dst: mac(3), src: mac(2), type: 0x88b5, payload: pattern(64, seed: 32))
        let buf = gb.ram.allocate(2048)
        gb.ram.write(buf, NetTestDriver.Header().bytes + frame)
        let q = gb.tx[0]
        q.writeDescriptor(200, addr: buf, len: UInt32(12 + frame.count), flags: 0, next: 0)
        let i = q.availIndex
        gb.ram.pointer(q.availGPA + 4 + 2 * UInt64(i % q.size)).storeBytes(of: UInt16(200), as: UInt16.self)
        gb.ram.pointer(q.availGPA + 4 + 2 * UInt64((i &+ 1) % q.size)).storeBytes(of: UInt16(200), as: UInt16.self)
        q.setAvailIndex(i &+ 2)
        kick(gb.txKick[0])
        XCTAssertTrue(eventually { self.logs.contains("export=b") && self.logs.contains("queue 1 stopped: tx head 200 made available again") },
                      "\(logs.all.suffix(5))")
        // The chain checked before the repeat went out (flooded: c's MAC is not learned yet).
        XCTAssertEqual(gc.receive()?.frame, frame)
        XCTAssertEqual(ga.receive()?.frame, frame)
        // The rest of the switch goes on: a and c still talk, and b still receives.
        gb.postRx(4)
        let ac = TestFrame.ethernet(dst: broadcast, src: mac(1), type: 0x88b5, payload: pattern(64, seed: 33))
        ga.send(ac)
        XCTAssertEqual(gc.receive()?.frame, ac)
        XCTAssertEqual(gb.receive()?.frame, ac)
        XCTAssertTrue(ga.waitTxDone())
    }

    func testRxChainWithReadableBuffersStopsOnlyThatRxQueue() throws {
        let sw = makeSwitch()
        let a = try serve("a", switch: sw), b = try serve("b", switch: sw), c = try serve("c", switch: sw)
        let ga = try guest(a), gb = try guest(b), gc = try guest(c)
        gc.postRx(4)
        // b's rx ring offers a device-readable buffer.
        let g = gb.ram.allocate(2048)
        gb.rx[0].add([.init(gpa: g, length: 2048, writable: false)])
        kick(gb.rxKick[0])
        let f1 = TestFrame.ethernet(dst: broadcast, src: mac(1), type: 0x88b5, payload: pattern(64, seed: 34))
        ga.send(f1)
        XCTAssertEqual(gc.receive()?.frame, f1)
        XCTAssertTrue(eventually { self.logs.contains("queue 0 stopped: an rx buffer chain has device-readable descriptors") })
        // a keeps sending: its chains come back (b no longer holds anything), c keeps receiving.
        for i in 0..<3 {
            let f = TestFrame.ethernet(dst: broadcast, src: mac(1), type: 0x88b5, payload: pattern(64, seed: 35 + UInt64(i)))
            ga.send(f)
            XCTAssertEqual(gc.receive()?.frame, f)
        }
        XCTAssertTrue(ga.waitTxDone())
        XCTAssertTrue(eventually { b.counter(.dropNoQueue) == 3 }, "\(b.counter(.dropNoQueue))")
        // b's tx still works.
        ga.postRx(2)
        let fb = TestFrame.ethernet(dst: mac(1), src: mac(2), type: 0x88b5, payload: pattern(64, seed: 40))
        gb.send(fb)
        XCTAssertEqual(ga.receive()?.frame, fb)
    }
}
