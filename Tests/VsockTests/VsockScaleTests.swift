#if canImport(Glibc)
import Glibc
#endif
import VhostUserTestSupport
import XCTest

/// Many connections at once, and nothing left behind when they close.
final class VsockScaleTests: VsockTestCase {
    func testThousandConnectionsOpenedAndClosedLeaveNoFD() throws {
        let s = try serve(cid: 3)
        let d = try guest(s)
        let lfd = try listen(s.portPath(9000), backlog: 2048)
        let n = 1000
        let before = openFDCount()

        // The host accepts everything on its own thread.
        let acceptor = Background { () throws -> [Int32] in
            var fds: [Int32] = []
            for _ in 0..<n { fds.append(try Host.accept(lfd)) }
            return fds
        }
        var conns: [VsockTestDriver.Conn] = []
        for i in 0..<n {
            guard let c = try d.connect(port: 9000, localPort: UInt32(20_000 + i)) else {
                return XCTFail("connection \(i) was reset")
            }
            conns.append(c)
        }
        let hostFDs = try acceptor.wait()
        fdsToClose += hostFDs
        XCTAssertEqual(hostFDs.count, n)
        XCTAssertEqual(openFDCount(), before + 2 * n, "one device fd and one host fd per connection")

        // Each connection is its own bridge: guest i sends i, the host sees every number exactly once,
        // and answers on the same socket.
        for (i, c) in conns.enumerated() {
            var b: [UInt8] = []
            b.le(UInt32(i))
            try d.send(c, b)
        }
        var seen = Set<UInt32>()
        var fdOf: [UInt32: Int32] = [:]
        for fd in hostFDs {
            let v = try Host.readExactly(fd, 4).u32(0)
            seen.insert(v)
            fdOf[v] = fd
            var back: [UInt8] = []
            back.le(v ^ 0xA5A5_A5A5)
            try Host.writeAll(fd, back)
        }
        XCTAssertEqual(seen, Set((0..<UInt32(n)).map { $0 }))
        XCTAssertTrue(d.wait(timeout: 30) { conns.allSatisfy { $0.received.count == 4 } })
        for (i, c) in conns.enumerated() { XCTAssertEqual(c.received.u32(0), UInt32(i) ^ 0xA5A5_A5A5) }

        // Close: even ones by RST, odd ones by SHUTDOWN(RCV|SEND) (answered by RST).
        for (i, c) in conns.enumerated() {
            if i % 2 == 0 { try d.reset(c) } else { try d.shutdown(c, flags: Shutdown.rcv | Shutdown.send) }
        }
        XCTAssertTrue(d.wait(timeout: 30) { conns.enumerated().allSatisfy { $0.offset % 2 == 0 || $0.element.reset } })
        try barrier(d)
        for i in 0..<UInt32(n) {
            let (data, end) = try Host.readToEnd(fdOf[i]!)
            XCTAssertEqual(data, [])
            XCTAssertEqual(end, .eof)
        }
        for fd in hostFDs { closeHost(fd) }
        XCTAssertEqual(openFDCount(), before, "every device-side fd was closed")
    }

    func testThousandHostConnectionsClosedByHostLeaveNoFD() throws {
        let s = try serve(cid: 3)
        let d = try guest(s)
        let n = 1000
        let before = openFDCount()
        var hostFDs: [Int32] = []
        var conns: [VsockTestDriver.Conn] = []
        for _ in 0..<n {
            hostFDs.append(try hostConnect(s, port: 555))
            conns.append(try d.accept(port: 555))
        }
        XCTAssertEqual(Set(conns.map(\.peerPort)).count, n, "distinct host ports")
        for (fd, c) in zip(hostFDs, conns) {
            XCTAssertEqual(try Host.readLine(fd).line, "OK \(c.peerPort)\n")
        }
        XCTAssertEqual(openFDCount(), before + 2 * n)
        // The host closes; the guest hears SHUTDOWN(SEND) and resets; the device lets go.
        for fd in hostFDs { closeHost(fd) }
        XCTAssertTrue(d.wait(timeout: 30) { conns.allSatisfy { $0.peerShutdown & Shutdown.send != 0 } })
        for c in conns { try d.reset(c) }
        try barrier(d)
        XCTAssertEqual(openFDCount(), before)
    }
}
