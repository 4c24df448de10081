import Net
import VhostUserTestSupport
import XCTest

/// The switch through real vhost-user sockets, ports on two pollers: learning, flooding, VLANs, anti-spoofing.
/// "Did not arrive" is shown by order, not by waiting: a port's frames arrive in the order the switch took them,
/// so a marker sent after a frame arriving first proves the frame was never delivered there.
final class NetSwitchTests: NetTestCase {
    func testFrameReachesPeerBytesIntact() throws {
        let sw = makeSwitch()
        let a = try serve("a", switch: sw, options: "poller=0")
        let b = try serve("b", switch: sw, options: "poller=1")
        let ga = try guest(a), gb = try guest(b)
        gb.postRx(8)
        let payload = pattern(1000, seed: 1)
        let frame = TestFrame.ethernet(dst: mac(2), src: mac(1), type: 0x88b5, payload: payload)
        ga.send(frame, split: true)
        let got = try XCTUnwrap(gb.receive())
        XCTAssertEqual(got.frame, frame)
        XCTAssertEqual(got.header.flags, 0)
        XCTAssertEqual(got.header.numBuffers, 1)
        XCTAssertTrue(ga.waitTxDone())
        XCTAssertEqual(a.counter(.txFrames), 1)
        XCTAssertEqual(a.counter(.txBytes), UInt64(frame.count))
        XCTAssertEqual(b.counter(.rxFrames), 1)
        XCTAssertEqual(b.counter(.rxBytes), UInt64(frame.count))
        XCTAssertEqual(a.device.sw.lookup(MACAddress(value: 0x5254_0000_0001)), "a", "the source was learned")
        XCTAssertTrue(logs.contains("queue 0 started on poller 0") && logs.contains("queue 0 started on poller 1"))
    }

    func testUnicastReachesOnlyTheLearnedPort() throws {
        let sw = makeSwitch()
        let a = try serve("a", switch: sw, options: "poller=0")
        let b = try serve("b", switch: sw, options: "poller=1")
        let c = try serve("c", switch: sw, options: "poller=1")
        let ga = try guest(a), gb = try guest(b), gc = try guest(c)
        for g in [ga, gb, gc] { g.postRx(16) }
        // a announces itself: flooded to b and c, and a is learned.
        let hello = TestFrame.ethernet(dst: broadcast, src: mac(1), type: 0x88b5, payload: pattern(60, seed: 2))
        ga.send(hello)
        XCTAssertEqual(gb.receive()?.frame, hello)
        XCTAssertEqual(gc.receive()?.frame, hello)
        // b to a: only a gets it.
        let toA = TestFrame.ethernet(dst: mac(1), src: mac(2), type: 0x88b5, payload: pattern(300, seed: 3))
        gb.send(toA)
        XCTAssertEqual(ga.receive()?.frame, toA)
        // A marker flooded from b after it: c's next frame is the marker, so the unicast never reached c.
        let marker = TestFrame.ethernet(dst: broadcast, src: mac(2), type: 0x88b5, payload: pattern(60, seed: 4))
        gb.send(marker)
        XCTAssertEqual(gc.receive()?.frame, marker)
        XCTAssertEqual(ga.receive()?.frame, marker)
        XCTAssertEqual(b.counter(.flooded), 1, "only the marker was flooded from b")
        XCTAssertEqual(a.counter(.flooded), 1)
    }

    func testUnknownUnicastAndMulticastFloodToEveryPortButTheSender() throws {
        let sw = makeSwitch()
        let a = try serve("a", switch: sw), b = try serve("b", switch: sw), c = try serve("c", switch: sw)
        let ga = try guest(a), gb = try guest(b), gc = try guest(c)
        for g in [ga, gb, gc] { g.postRx(16) }
        let unknown = TestFrame.ethernet(dst: mac(99), src: mac(1), type: 0x88b5, payload: pattern(100, seed: 5))
        let multicast = TestFrame.ethernet(dst: [0x01, 0x00, 0x5e, 0, 0, 1], src: mac(1), type: 0x0800, payload: pattern(100, seed: 6))
        ga.send(unknown)
        ga.send(multicast)
        for g in [gb, gc] {
            XCTAssertEqual(g.receive()?.frame, unknown)
            XCTAssertEqual(g.receive()?.frame, multicast)
        }
        // The sender's own next frame is b's, not its own flood.
        let fromB = TestFrame.ethernet(dst: mac(1), src: mac(2), type: 0x88b5, payload: pattern(80, seed: 7))
        gb.send(fromB)
        XCTAssertEqual(ga.receive()?.frame, fromB)
        XCTAssertEqual(a.counter(.flooded), 2)
        XCTAssertEqual(b.counter(.rxFrames), 2)
    }

    func testVLANsDoNotLeak() throws {
        let sw = makeSwitch()
        let a10 = try serve("a10", switch: sw, options: "vlan=10")
        let b10 = try serve("b10", switch: sw, options: "vlan=10")
        let c20 = try serve("c20", switch: sw, options: "vlan=20")
        let d20 = try serve("d20", switch: sw, options: "vlan=20")
        let u = try serve("u", switch: sw)
        let ga = try guest(a10), gb = try guest(b10), gc = try guest(c20), gd = try guest(d20), gu = try guest(u)
        for g in [ga, gb, gc, gd, gu] { g.postRx(16) }
        // c20 is learned in VLAN 20 first.
        let cHello = TestFrame.ethernet(dst: broadcast, src: mac(3), type: 0x88b5, payload: pattern(60, seed: 8))
        gc.send(cHello)
        XCTAssertEqual(gd.receive()?.frame, cHello)
        // From VLAN 10: a broadcast, and a unicast to c's MAC (unknown in VLAN 10, so flooded there only).
        let bcast = TestFrame.ethernet(dst: broadcast, src: mac(1), type: 0x88b5, payload: pattern(60, seed: 9))
        let toC = TestFrame.ethernet(dst: mac(3), src: mac(1), type: 0x88b5, payload: pattern(60, seed: 10))
        ga.send(bcast)
        ga.send(toC)
        XCTAssertEqual(gb.receive()?.frame, bcast)
        XCTAssertEqual(gb.receive()?.frame, toC)
        // Markers in VLAN 20 and in the untagged domain arrive first: nothing from VLAN 10 got there.
        let m20 = TestFrame.ethernet(dst: broadcast, src: mac(4), type: 0x88b5, payload: pattern(60, seed: 11))
        gd.send(m20)
        XCTAssertEqual(gc.receive()?.frame, m20)
        let mu = TestFrame.ethernet(dst: mac(5), src: mac(6), type: 0x88b5, payload: pattern(60, seed: 12))
        gu.send(mu)
        XCTAssertTrue(gu.waitTxDone())
        XCTAssertEqual(u.counter(.rxFrames), 0)
        XCTAssertEqual(c20.counter(.rxFrames), 1, "only d20's marker")
        // The same MAC may live in two VLANs independently.
        XCTAssertEqual(c20.device.sw.lookup(MACAddress(value: 0x5254_0000_0003), vlan: 20), "c20")
        XCTAssertNil(c20.device.sw.lookup(MACAddress(value: 0x5254_0000_0003), vlan: 10))
        // A tagged frame from an access port is dropped and counted.
        let tagged = [UInt8](broadcast + mac(1)) + [0x81, 0x00, 0x00, 20, 0x08, 0x00] + pattern(50, seed: 13)
        ga.send(tagged)
        XCTAssertTrue(ga.waitTxDone())
        XCTAssertEqual(a10.counter(.dropTagged), 1)
    }

    func testSpoofedSourcesAreDroppedAndCounted() throws {
        let sw = makeSwitch()
        let a = try serve("a", switch: sw, options: "mac=52:54:00:00:00:01")
        let b = try serve("b", switch: sw)
        let ga = try guest(a), gb = try guest(b)
        ga.postRx(8)
        gb.postRx(8)
        XCTAssertEqual(a.device.sw.lookup(MACAddress(value: 0x5254_0000_0001)), "a", "known from the start")
        // a posing as another MAC; b posing as a; a multicast source.
        ga.send(TestFrame.ethernet(dst: broadcast, src: mac(7), type: 0x88b5, payload: pattern(60, seed: 14)))
        gb.send(TestFrame.ethernet(dst: broadcast, src: mac(1), type: 0x88b5, payload: pattern(60, seed: 15)))
        gb.send(TestFrame.ethernet(dst: broadcast, src: [0x01, 0, 0, 0, 0, 1], type: 0x88b5, payload: pattern(60, seed: 16)))
        XCTAssertTrue(ga.waitTxDone())
        XCTAssertTrue(gb.waitTxDone())
        XCTAssertEqual(a.counter(.dropSpoofed), 1)
        XCTAssertEqual(b.counter(.dropSpoofed), 1)
        XCTAssertEqual(b.counter(.dropBadSource), 1)
        XCTAssertEqual(a.device.sw.lookup(MACAddress(value: 0x5254_0000_0001)), "a", "still a's")
        // a's own MAC goes through; it is the first thing b receives.
        let ok = TestFrame.ethernet(dst: broadcast, src: mac(1), type: 0x88b5, payload: pattern(60, seed: 17))
        ga.send(ok)
        XCTAssertEqual(gb.receive()?.frame, ok)
        let okB = TestFrame.ethernet(dst: mac(1), src: mac(2), type: 0x88b5, payload: pattern(60, seed: 18))
        gb.send(okB)
        XCTAssertEqual(ga.receive()?.frame, okB)
    }

    func testPortWithoutRxBuffersDropsAndCountsWithoutSlowingOthers() throws {
        let sw = makeSwitch()
        let a = try serve("a", switch: sw, options: "poller=0")
        let b = try serve("b", switch: sw, options: "poller=1")
        let c = try serve("c", switch: sw, options: "poller=0")
        let ga = try guest(a), gb = try guest(b)
        _ = try guest(c)   // c's guest never posts rx buffers
        let n = 600
        var got = 0
        gb.postRx(200)
        for i in 0..<n {
            ga.send(TestFrame.ethernet(dst: broadcast, src: mac(1), type: 0x88b5, payload: pattern(64, seed: UInt64(i))))
            if i % 100 == 99 {
                // b keeps up: it takes what arrived and posts as many buffers again.
                for _ in 0..<100 {
                    guard let f = gb.receive() else { break }
                    XCTAssertEqual(Array(f.frame.suffix(64)), pattern(64, seed: UInt64(got)))
                    got += 1
                }
                gb.postRx(100)
                XCTAssertTrue(ga.waitTxDone(), "a's chains come back although c takes nothing")
            }
        }
        XCTAssertEqual(got, n)
        XCTAssertTrue(eventually { c.counter(.dropNoRxBuffers) == UInt64(n) }, "c dropped \(c.counter(.dropNoRxBuffers))")
        XCTAssertEqual(c.counter(.rxFrames), 0)
        XCTAssertEqual(b.counter(.rxFrames), UInt64(n))
    }

    func testRARPAnnouncesTheGuestAfterMigration() throws {
        let sw = makeSwitch()
        let a = try serve("a", switch: sw)
        let b = try serve("b", switch: sw)
        let ga = try guest(a), gb = try guest(b)
        gb.postRx(4)
        XCTAssertEqual(try ga.sendRARP(mac(1)), 0)
        let f = try XCTUnwrap(gb.receive()).frame
        XCTAssertEqual(Array(f[0..<6]), broadcast)
        XCTAssertEqual(Array(f[6..<12]), mac(1))
        XCTAssertEqual(Array(f[12..<14]), [0x80, 0x35], "EtherType RARP")
        XCTAssertEqual(Array(f[20..<22]), [0, 3], "reverse request")
        XCTAssertEqual(Array(f[22..<28]), mac(1))
        XCTAssertEqual(a.device.sw.lookup(MACAddress(value: 0x5254_0000_0001)), "a")
    }

    func testRARPForAnotherMACIsRefused() throws {
        let sw = makeSwitch()
        let a = try serve("a", switch: sw, options: "mac=52:54:00:00:00:01")
        let ga = try guest(a)
        XCTAssertNotEqual(try ga.sendRARP(mac(2)), 0)
        XCTAssertEqual(try ga.sendRARP(mac(1)), 0)
    }
}
