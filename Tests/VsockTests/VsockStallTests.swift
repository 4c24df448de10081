#if canImport(Glibc)
import Glibc
#endif
import VhostUserTestSupport
import Virtio
import Foundation
import XCTest

/// Issue 8: streams in both directions at once must never stop for good, whatever the guest's rx queue does.
/// An echo through a slow host peer (guest -> host -> guest on one connection) runs beside host-initiated
/// flows that move data both ways, while the guest's rx queue is starved and refilled at random moments.
final class VsockStallTests: VsockTestCase {
    /// xorshift64 for the schedule (not the data): each round is reproducible from its seed.
    struct Rng {
        var x: UInt64
        init(_ seed: UInt64) { x = seed &* 0x9E37_79B9_7F4A_7C15 | 1 }
        mutating func next() -> UInt64 {
            x ^= x << 13
            x ^= x >> 7
            x ^= x << 17
            return x
        }
        mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    }

    /// A host echo program built like `socat UNIX-LISTEN:... SYSTEM:"tee FILE"`: one thread reads the socket
    /// into a bounded pipe (tee's), another writes the pipe back with blocking writes; it pauses now and then.
    final class EchoPeer: @unchecked Sendable {
        let fd: Int32
        let seed: UInt64
        let cond = NSCondition()
        var pipe: [UInt8] = []
        var eof = false
        var writeError: Error?
        static let pipeCapacity = 128 * 1024

        init(fd: Int32, seed: UInt64) {
            self.fd = fd
            self.seed = seed
            // Little socket buffering of its own, like a process that writes as it goes.
            var sndbuf: Int32 = 16384
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, socklen_t(MemoryLayout<Int32>.size))
        }

        /// Echoes until EOF; returns how many bytes came in and their checksum.
        func run() throws -> (Int, UInt64) {
            let writer = Background { [self] in try writeBack() }
            var r = Rng(seed)
            var buf = [UInt8](repeating: 0, count: 8192)
            var seen: [UInt8] = []
            while true {
                cond.lock()
                while pipe.count + buf.count > EchoPeer.pipeCapacity && writeError == nil { cond.wait() }
                cond.unlock()
                let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 {
                    if n < 0 { throw TestSupportError("echo peer read: errno \(errno) after \(seen.count) bytes") }
                    break
                }
                seen += buf[0..<n]
                if r.below(8) == 0 { usleep(UInt32(100 + r.below(3000))) }
                cond.lock()
                pipe += buf[0..<n]
                cond.signal()
                cond.unlock()
            }
            cond.lock()
            eof = true
            cond.signal()
            cond.unlock()
            try writer.wait(timeout: 120)
            Glibc.shutdown(fd, Int32(SHUT_WR))
            return (seen.count, checksum(seen))
        }

        private func writeBack() throws {
            while true {
                cond.lock()
                while pipe.isEmpty && !eof { cond.wait() }
                if pipe.isEmpty { cond.unlock(); return }
                let chunk = Array(pipe.prefix(8192))
                cond.unlock()
                do { try Host.writeAll(fd, chunk) } catch {
                    cond.lock()
                    writeError = error
                    cond.signal()
                    cond.unlock()
                    throw error
                }
                cond.lock()
                pipe.removeFirst(chunk.count)
                cond.signal()
                cond.unlock()
            }
        }
    }

    func testEchoAndHostFlowsNeverStallWithRxStarvedAtRandom() throws {
        // A small tx-buffer-size makes credit updates frequent; the default one is exercised too.
        for round in 0..<12 {
            try runRound(round, txBufferSize: round % 4 == 3 ? 256 * 1024 : 64 * 1024)
            if testRun?.totalFailureCount ?? 0 > 0 { return }
        }
    }

    /// Everything a round moved, as the host and the guest saw it.
    private func runRound(_ round: Int, txBufferSize: Int) throws {
        let s = try serve(id: "st\(round)", cid: 3, options: "tx-buffer-size=\(txBufferSize)")
        let d = try guest(s)
        defer {
            drivers.removeAll()
            exports.removeLast().stop()
        }
        var rng = Rng(UInt64(round) + 77)
        let echoData = pattern(3 << 20, seed: UInt64(round) * 10 + 1)
        let flowCount = 3
        let flowSize = 1 << 20

        // The slow echo peer: reads a little at a time, sometimes pauses, writes every byte back.
        let lfd = try listen(s.portPath(5000))
        let echoSeed = rng.next()
        let echo = Background { () throws -> (Int, UInt64) in
            let fd = try Host.accept(lfd)
            defer { close(fd) }
            return try EchoPeer(fd: fd, seed: echoSeed).run()
        }
        guard let ec = try d.connect(port: 5000, localPort: 7000 + UInt32(round)) else {
            throw TestSupportError("echo connection refused")
        }

        // Host-initiated flows through uds-path: each sends flowSize bytes and reads flowSize bytes back.
        var hostFDs: [Int32] = []
        var flows: [VsockTestDriver.Conn] = []
        for i in 0..<flowCount {
            let port = 1234 + UInt32(i)
            let fd = try hostConnect(s, port: port)
            let c = try d.accept(port: port)
            XCTAssertEqual(try Host.readLine(fd).line, "OK \(c.peerPort)\n")
            hostFDs.append(fd)
            flows.append(c)
        }
        let down = (0..<flowCount).map { pattern(flowSize, seed: UInt64(round) * 10 + 2 + UInt64($0)) }
        let up = (0..<flowCount).map { pattern(flowSize, seed: UInt64(round) * 10 + 5 + UInt64($0)) }
        let writers = (0..<flowCount).map { i in Background { try Host.writeAll(hostFDs[i], down[i]) } }
        let readers = (0..<flowCount).map { i in Background { try Host.readExactly(hostFDs[i], flowSize) } }

        // The guest's echo program works like socat: it writes an 8 KiB block (blocking until credit lets all of
        // it out), then reads what the echo brought (up to its read size), and so on; while a write blocks it
        // reads nothing, and sends nothing that would tell the device what it read. Its
        // kernel reports what was read the way Linux does: only once less than 64 KiB of the buffer is left
        // unreported (virtio_transport_stream_do_dequeue), and on CREDIT_REQUEST.
        ec.consuming = false
        var echoBlock = 0
        var echoConsumed = 0
        // Programs read with buffers of different sizes (socat 8 KiB, others up to 128 KiB).
        let readSize = 8192 << rng.below(5)
        func appRead() {
            let k = min(readSize, ec.totalReceived - echoConsumed)
            guard k > 0 else { return }
            echoConsumed += k
            ec.fwdCnt = UInt32(truncatingIfNeeded: echoConsumed)
            if Int(d.bufAlloc) - Int(ec.fwdCnt &- ec.advertised) < 65536 { try? d.sendPacket(d.header(ec, .creditUpdate)) }
        }
        // The host flows' guest ends read and write independently (two processes); the guest starves its rx
        // queue now and then.
        var echoSent = 0
        var flowSent = [Int](repeating: 0, count: flowCount)
        var echoShut = false
        var lastTotal = -1
        var lastProgress = (Double(monotonicMicros()) / 1e6)
        func moved() -> Int {
            echoSent + ec.totalReceived + echoConsumed + flowSent.reduce(0, +) + flows.reduce(0) { $0 + $1.totalReceived }
        }
        func finished() -> Bool {
            echoConsumed >= echoData.count && flowSent.allSatisfy { $0 == flowSize }
                && flows.allSatisfy { $0.totalReceived >= flowSize }
        }
        while !finished() {
            d.poll()
            let r = rng.below(1000)
            if d.holdRx { if r < 40 { d.holdRx = false } } else if r < 15 { d.holdRx = true }
            if echoBlock == 0 {
                // Between blocks the program reads (up to a block of) the echo.
                appRead()
                if echoSent < echoData.count {
                    echoBlock = min(8192, echoData.count - echoSent)
                } else if !echoShut {
                    try d.shutdown(ec, flags: Shutdown.send)
                    echoShut = true
                }
            }
            if echoBlock > 0 {
                // A blocking write: sends as credit allows, and reads nothing until the block is out.
                let n = min(echoBlock, Int(ec.credit), 65536)
                if n > 0 {
                    try d.sendPacket(d.header(ec, .rw), Array(echoData[echoSent..<(echoSent + n)]))
                    ec.txCnt &+= UInt32(n)
                    echoSent += n
                    echoBlock -= n
                }
            }
            for (i, c) in flows.enumerated() where flowSent[i] < flowSize {
                let n = min(1 + rng.below(65536), flowSize - flowSent[i], Int(c.credit))
                if n > 0 {
                    try d.sendPacket(d.header(c, .rw), Array(up[i][flowSent[i]..<(flowSent[i] + n)]))
                    c.txCnt &+= UInt32(n)
                    flowSent[i] += n
                }
            }
            let total = moved()
            if total != lastTotal {
                lastTotal = total
                lastProgress = (Double(monotonicMicros()) / 1e6)
            } else if (Double(monotonicMicros()) / 1e6) - lastProgress > 10 {
                d.holdRx = false
                d.poll()
                if moved() != total { continue }
                let state = ([("echo", ec)] + flows.enumerated().map { ("flow\($0.offset)", $0.element) }).map { name, c in
                    "\(name): sent \(c.txCnt) credit \(c.credit) (peer buf_alloc \(c.peerBufAlloc) fwd_cnt \(c.peerFwdCnt)) received \(c.totalReceived)"
                }
                XCTFail("round \(round): nothing moved for 10 s; echo sent \(echoSent)/\(echoData.count), read \(echoConsumed); " + state.joined(separator: "; "))
                return
            }
            if d.holdRx == false && rng.below(50) == 0 { usleep(50) }
        }
        d.holdRx = false
        d.poll()

        let (echoedCount, echoedSum) = try echo.wait()
        XCTAssertEqual(echoedCount, echoData.count, "round \(round): the host peer got the whole guest stream")
        XCTAssertEqual(echoedSum, checksum(echoData), "round \(round): the host peer got the guest's bytes")
        XCTAssertEqual(ec.received.count, echoData.count, "round \(round): the echo came back whole")
        XCTAssertTrue(ec.received == echoData, "round \(round): the echo came back byte-exact")
        for i in 0..<flowCount {
            try writers[i].wait()
            let got = try readers[i].wait()
            XCTAssertEqual(checksum(got), checksum(up[i]), "round \(round): flow \(i) guest -> host")
            XCTAssertEqual(checksum(flows[i].received), checksum(down[i]), "round \(round): flow \(i) host -> guest")
            XCTAssertFalse(flows[i].reset)
            closeHost(hostFDs[i])
        }
        XCTAssertFalse(ec.reset)
        // Every packet carries the device's fwd_cnt; one that reports less than an earlier one takes credit
        // back from the guest (the guest overwrites its copy, as Linux does), which can leave it blocked.
        for (name, c) in [("echo", ec)] + flows.enumerated().map({ ("flow\($0.offset)", $0.element) }) {
            XCTAssertEqual(c.fwdCntRegressions, 0, "round \(round): \(name) saw fwd_cnt go back (by up to \(c.largestFwdCntRegression) bytes)")
        }
    }
}

/// The stall detector (issue 8): a connection with work pending and no progress is logged once, with its
/// state, and counted; one that moves again is not logged again until it stalls again.
final class VsockStallDetectorTests: VsockTestCase {
    func testConnectionWaitingForGuestCreditIsLoggedOnceAndCounted() throws {
        let s = try serve(cid: 3, options: "stall-timeout-ms=200")
        let d = try guest(s, bufAlloc: 16 * 1024)
        let lfd = try listen(s.portPath(5000))
        let (c, h) = try open(d, lfd, port: 5000, localPort: 300)
        c.consuming = false
        // The host has more than the guest's buffer to send; the guest reads nothing: no credit comes back.
        let writer = Background { try Host.writeAll(h, pattern(256 * 1024, seed: 41)) }
        XCTAssertTrue(d.wait(timeout: 10) { c.totalReceived >= 16 * 1024 }, "the guest's buffer filled")
        XCTAssertTrue(d.wait(timeout: 10) { s.counter(.stalls, 1) >= 1 }, "the stall was counted")
        XCTAssertTrue(d.wait(timeout: 10) { self.logs.all.contains { $0.contains("stall:") } })
        let lines = logs.all.filter { $0.contains("stall:") }
        XCTAssertEqual(lines.count, 1, "logged once: \(lines)")
        let line = lines.first ?? ""
        XCTAssertTrue(line.contains("guest port 300 <-> host port 5000"), line)
        XCTAssertTrue(line.contains("credit 0 of 16384"), line)
        XCTAssertTrue(line.contains("waiting-guest-credit"), line)
        XCTAssertTrue(line.contains("socket ready [in"), line)
        // Still stuck a while later: still one report.
        _ = d.wait(timeout: 1) { false }
        XCTAssertEqual(s.counter(.stalls, 1), 1)

        // The guest reads: data moves again, and a new stall would be a new report.
        try d.consume(c)
        c.consuming = false
        XCTAssertTrue(d.wait(timeout: 10) { c.totalReceived >= 32 * 1024 })
        XCTAssertTrue(d.wait(timeout: 10) { s.counter(.stalls, 1) >= 2 }, "the next stall is counted again")
        XCTAssertTrue(d.wait(timeout: 10) { self.logs.all.filter { $0.contains("stall:") }.count == 2 })
        XCTAssertTrue(logs.all.contains { $0.contains("moving again") })
        try d.consume(c)
        XCTAssertTrue(d.wait(timeout: 30) { c.totalReceived >= 256 * 1024 })
        try writer.wait()
    }

    func testIdleConnectionIsNotAStallAndZeroTurnsTheCheckOff() throws {
        let s = try serve(cid: 3, options: "stall-timeout-ms=100")
        let d = try guest(s)
        let lfd = try listen(s.portPath(5000))
        let (c, h) = try open(d, lfd, port: 5000, localPort: 301)
        try d.send(c, pattern(1000, seed: 42))
        XCTAssertEqual(try Host.readExactly(h, 1000), pattern(1000, seed: 42))
        _ = d.wait(timeout: 0.6) { false }
        XCTAssertEqual(s.counter(.stalls, 1), 0, "nothing pending: an idle connection is not stalled")

        let off = try serve(id: "vs1", cid: 4, options: "stall-timeout-ms=0")
        let d2 = try guest(off, bufAlloc: 4096)
        let lfd2 = try listen(off.portPath(5000))
        let (c2, h2) = try open(d2, lfd2, port: 5000, localPort: 302)
        c2.consuming = false
        try Host.writeAll(h2, pattern(8192, seed: 43))
        XCTAssertTrue(d2.wait(timeout: 10) { c2.totalReceived >= 4096 })
        _ = d2.wait(timeout: 0.6) { false }
        XCTAssertEqual(off.counter(.stalls, 1), 0, "stall-timeout-ms=0: no check")
    }
}
