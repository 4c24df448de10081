#if canImport(Glibc)
import Glibc
#endif
import VhostUserTestSupport
import XCTest

/// Credit-based flow control (virtio 1.3, 5.10.6.3), both directions.
final class VsockCreditTests: VsockTestCase {
    /// Device -> guest: the device never has more than the guest's buf_alloc unconsumed bytes in flight.
    func testDeviceStopsAtGuestBufAllocUntilGuestConsumes() throws {
        let s = try serve(cid: 3)
        let guestBuf: UInt32 = 64 * 1024
        let d = try guest(s, bufAlloc: guestBuf)
        let lfd = try listen(s.portPath(5000))
        let (c, h) = try open(d, lfd, port: 5000, localPort: 200)
        c.consuming = false

        let down = pattern(1 << 20, seed: 31)
        let writer = Background { try Host.writeAll(h, down) }
        var maxSeen = 0
        XCTAssertTrue(d.wait(timeout: 30) {
            maxSeen = max(maxSeen, c.totalReceived)
            return c.totalReceived >= Int(guestBuf)
        }, "the device sent the first buf_alloc bytes")
        // Several round trips through the device while the host has plenty more to send: nothing more comes.
        for _ in 0..<3 {
            try barrier(d, c)
            maxSeen = max(maxSeen, c.totalReceived)
        }
        XCTAssertEqual(maxSeen, Int(guestBuf), "never more than buf_alloc unconsumed bytes")
        XCTAssertEqual(c.received.count, Int(guestBuf))
        XCTAssertTrue(c.received == Array(down[0..<Int(guestBuf)]))

        // The guest catches up: the rest arrives, byte-exact, and credit is honoured all along.
        try d.consume(c)
        XCTAssertTrue(d.wait(timeout: 60) { c.received.count >= down.count })
        try writer.wait()
        XCTAssertEqual(c.received.count, down.count)
        XCTAssertEqual(checksum(c.received), checksum(down))
        XCTAssertTrue(c.received == down)
        XCTAssertFalse(c.reset)
    }

    /// Device -> guest with a guest that consumes slowly: in-flight bytes (sent, not yet reported consumed)
    /// never exceed buf_alloc at any point.
    func testInFlightNeverExceedsGuestBufAlloc() throws {
        let s = try serve(cid: 3)
        let guestBuf: UInt32 = 16 * 1024
        let d = try guest(s, bufAlloc: guestBuf)
        let lfd = try listen(s.portPath(5000))
        let (c, h) = try open(d, lfd, port: 5000, localPort: 201)
        c.consuming = false
        let down = pattern(512 * 1024, seed: 32)
        let writer = Background { try Host.writeAll(h, down) }
        var consumedReported = 0
        var violations = 0
        let deadline = Date().addingTimeInterval(60)
        while c.totalReceived < down.count && Date() < deadline {
            d.poll()
            if c.totalReceived - consumedReported > Int(guestBuf) { violations += 1 }
            if c.totalReceived - consumedReported >= Int(guestBuf) {
                // Consume in small steps: the device only ever gets a little credit back.
                consumedReported += 4096
                c.fwdCnt = UInt32(consumedReported)
                try d.sendPacket(d.header(c, .creditUpdate))
            }
            usleep(50)
        }
        try writer.wait()
        XCTAssertEqual(violations, 0)
        XCTAssertEqual(c.received.count, down.count)
        XCTAssertTrue(c.received == down)
    }

    /// Guest -> device: the host does not read; the guest sends until the device's credit (tx-buffer-size)
    /// is used up; then the host reads, CREDIT_UPDATEs come and the guest finishes.
    func testGuestStallsAtDeviceCreditAndResumesOnCreditUpdate() throws {
        let s = try serve(cid: 3, options: "tx-buffer-size=65536")
        let d = try guest(s)
        let lfd = try listen(s.portPath(5000))
        let (c, h) = try open(d, lfd, port: 5000, localPort: 202)
        XCTAssertEqual(c.peerBufAlloc, 65536, "buf_alloc = tx-buffer-size")

        let up = pattern(6 << 20, seed: 33)
        let stalledAt = try sendUntilStalled(d, c, up)
        XCTAssertLessThan(stalledAt, up.count, "the guest ran out of credit")
        XCTAssertGreaterThanOrEqual(stalledAt, 65536)
        // The device answered the CREDIT_REQUEST with its real fwd_cnt: it holds exactly buf_alloc bytes the
        // host socket would not take, and not one more.
        XCTAssertEqual(c.txCnt &- c.peerFwdCnt, 65536)
        XCTAssertEqual(Int(c.txCnt), stalledAt)
        XCTAssertFalse(c.reset)
        let fwdAtStall = c.peerFwdCnt

        // The host reads everything; the device sends CREDIT_UPDATEs and the guest finishes.
        let reader = Background { try Host.readExactly(h, up.count) }
        var creditUpdates = 0
        var off = stalledAt
        let deadline = Date().addingTimeInterval(60)
        while off < up.count && Date() < deadline {
            for p in d.poll() where p.header.op == Op.creditUpdate && p.header.dstPort == c.localPort { creditUpdates += 1 }
            let n = min(65536, up.count - off, Int(c.credit))
            if n == 0 { usleep(50); continue }
            try d.sendPacket(d.header(c, .rw), Array(up[off..<(off + n)]))
            c.txCnt &+= UInt32(n)
            off += n
        }
        let got = try reader.wait()
        XCTAssertEqual(off, up.count)
        XCTAssertGreaterThan(creditUpdates, 0, "unprompted CREDIT_UPDATEs returned the credit")
        XCTAssertGreaterThan(c.peerFwdCnt &- fwdAtStall, 0)
        XCTAssertEqual(got.count, up.count)
        XCTAssertEqual(checksum(got), checksum(up))
        XCTAssertTrue(got == up)
        XCTAssertFalse(c.reset)
        // Every byte reached the host: fwd_cnt as the device reports it now covers all of them.
        try barrier(d, c)
        XCTAssertEqual(c.peerFwdCnt, c.txCnt)
    }

    /// A guest that sends past its credit while the device is full gets RST; the host keeps what was forwarded.
    func testGuestSendingPastCreditGetsRST() throws {
        let s = try serve(cid: 3, options: "tx-buffer-size=65536")
        let d = try guest(s)
        let lfd = try listen(s.portPath(5000))
        let (c, h) = try open(d, lfd, port: 5000, localPort: 203)
        let up = pattern(6 << 20, seed: 34)
        let stalledAt = try sendUntilStalled(d, c, up)
        XCTAssertEqual(c.credit, 0)
        // One byte more than the credit allows.
        try d.sendPacket(d.header(c, .rw), [up[stalledAt]])
        let got = packets(d, where: { $0.header.dstPort == 203 }, until: { $0.contains { $0.header.op == Op.rst } })
        guard let rst = got.first(where: { $0.header.op == Op.rst }) else { return XCTFail("no RST for a credit violation") }
        XCTAssertEqual(rst.header.srcPort, 5000)
        XCTAssertTrue(c.reset)
        // The host socket is closed; it got a prefix of the data: what the device had forwarded.
        let (data, end) = try Host.readToEnd(h)
        XCTAssertEqual(end, .eof)
        XCTAssertEqual(data.count, Int(rst.header.fwdCnt), "the RST's fwd_cnt counts what the host got")
        XCTAssertTrue(data == Array(up[0..<data.count]))
        XCTAssertGreaterThan(s.counter(.errors, 1), 0, "counted as a guest error")
    }

    /// One RW larger than the device's whole buf_alloc is refused outright.
    func testSingleRWLargerThanBufAllocGetsRST() throws {
        let s = try serve(cid: 3, options: "tx-buffer-size=4096")
        let d = try guest(s)
        let lfd = try listen(s.portPath(5000))
        let (c, h) = try open(d, lfd, port: 5000, localPort: 204)
        XCTAssertEqual(c.peerBufAlloc, 4096)
        try d.sendPacket(d.header(c, .rw), pattern(8192, seed: 35))
        XCTAssertTrue(d.wait { c.reset })
        let (data, _) = try Host.readToEnd(h)
        XCTAssertEqual(data, [], "nothing of the oversized packet was forwarded")
    }

    /// CREDIT_REQUEST is answered with CREDIT_UPDATE carrying buf_alloc and fwd_cnt.
    func testCreditRequestAnswered() throws {
        let s = try serve(cid: 3, options: "tx-buffer-size=131072")
        let d = try guest(s)
        let lfd = try listen(s.portPath(5000))
        let (c, h) = try open(d, lfd, port: 5000, localPort: 205)
        try d.send(c, pattern(1000, seed: 36))
        _ = try Host.readExactly(h, 1000)
        let p = try barrier(d, c)
        XCTAssertEqual(p.header.bufAlloc, 131072)
        XCTAssertEqual(p.header.fwdCnt, 1000)
        XCTAssertEqual(p.header.srcCID, hostCID)
        XCTAssertEqual(p.header.len, 0)
    }
}

/// Issue 8: credit the guest has but has not reported must not stop a flow for good.
final class VsockCreditRequestTests: VsockTestCase {
    /// Linux reports what its reader consumed only once less than 64 KiB of its buffer would stay unreported,
    /// and a reader blocked writing sends nothing else that carries its fwd_cnt. The device, paused for
    /// credit with host data waiting, asks (CREDIT_REQUEST, 5.10.6.3) and the flow moves on.
    func testDevicePausedForCreditAsksTheGuestThatReadWithoutTelling() throws {
        // Guest buffers and amounts read silently (Linux stays quiet below buf_alloc - 64 KiB).
        let cases: [(bufAlloc: UInt32, read: Int)] = [(256 * 1024, 100 * 1024), (256 * 1024, 4096), (256 * 1024, 190 * 1024),
                                                      (128 * 1024, 60 * 1024), (128 * 1024, 1), (96 * 1024, 30 * 1024)]
        for (i, k) in cases.enumerated() {
            let s = try serve(id: "cr\(i)", cid: 3)
            let lfd = try listen(s.portPath(5000))
            let d = try guest(s, bufAlloc: k.bufAlloc)
            let (c, h) = try open(d, lfd, port: 5000, localPort: 400 + UInt32(i))
            c.consuming = false
            let down = pattern(1 << 20, seed: 51 + UInt64(i))
            let writer = Background { try Host.writeAll(h, down) }
            XCTAssertTrue(d.wait(timeout: 20) { c.totalReceived >= Int(k.bufAlloc) }, "case \(i): the guest's buffer filled")

            // The program reads; its kernel keeps quiet, and the program sends nothing (blocked elsewhere).
            c.fwdCnt = UInt32(k.read)
            let moved = d.wait(timeout: 20) { c.totalReceived >= Int(k.bufAlloc) + k.read }
            XCTAssertTrue(moved, "case \(i): the device never learned of the \(k.read) bytes the guest read: stuck at \(c.totalReceived)")
            try barrier(d, c)
            XCTAssertEqual(c.totalReceived, Int(k.bufAlloc) + k.read, "case \(i): exactly the credit the guest had, no more")
            XCTAssertEqual(c.received, Array(down[0..<c.received.count]))

            // The reader catches up and reports as it goes: the rest arrives byte-exact.
            c.consuming = true
            try d.consume(c)
            XCTAssertTrue(d.wait(timeout: 60) { c.received.count >= down.count })
            try writer.wait()
            XCTAssertEqual(checksum(c.received), checksum(down), "case \(i)")
            XCTAssertFalse(c.reset)
            closeHost(h)
            if !moved { return }
        }
    }
}
