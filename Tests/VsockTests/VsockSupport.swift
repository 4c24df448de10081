#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Exports
import Foundation
import Logging
import VhostUserTestSupport
import Virtio
import Vsock
import XCTest

// MARK: - wire constants, written here from virtio 1.3 5.10 / <linux/virtio_vsock.h> (not from vdevd)

enum Op {
    static let request: UInt16 = 1, response: UInt16 = 2, rst: UInt16 = 3, shutdown: UInt16 = 4, rw: UInt16 = 5
    static let creditUpdate: UInt16 = 6, creditRequest: UInt16 = 7
}

enum SockType {
    static let stream: UInt16 = 1
    static let seqpacket: UInt16 = 2
}

enum Shutdown {
    static let rcv: UInt32 = 1    // VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE
    static let send: UInt32 = 2   // VIRTIO_VSOCK_SHUTDOWN_F_SEND
}

let hostCID: UInt64 = 2
let headerSize = 44

// MARK: - data

/// Deterministic pseudo-random bytes (xorshift64): misordered, lost or duplicated bytes change the checksum.
func pattern(_ n: Int, seed: UInt64) -> [UInt8] {
    var x = (seed &+ 1) &* 0x9E37_79B9_7F4A_7C15
    var out = [UInt8](repeating: 0, count: n)
    out.withUnsafeMutableBufferPointer { p in
        for i in 0..<n {
            x ^= x << 13
            x ^= x >> 7
            x ^= x << 17
            p[i] = UInt8(truncatingIfNeeded: x >> 24)
        }
    }
    return out
}

/// FNV-1a 64.
func checksum(_ b: [UInt8]) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    b.withUnsafeBufferPointer { p in
        for x in p {
            h ^= UInt64(x)
            h = h &* 0x100_0000_01b3
        }
    }
    return h
}

// MARK: - work on another thread

/// Runs `body` on its own thread; `wait` joins it (the timeout is a safety net, not an assertion about time).
final class Background<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var result: Result<T, Error>?
    private let done = DispatchSemaphore(value: 0)

    init(_ body: @escaping () throws -> T) {
        let t = Thread { [self] in
            let r = Result { try body() }
            lock.lock()
            result = r
            lock.unlock()
            done.signal()
        }
        t.stackSize = 4 << 20
        t.start()
    }

    func wait(timeout: Double = 60) throws -> T {
        guard done.wait(timeout: .now() + timeout) == .success else { throw TestSupportError("background work never finished") }
        lock.lock()
        defer { lock.unlock() }
        return try result!.get()
    }
}

// MARK: - host side: plain Unix sockets

enum Host {
    static let stream = Int32(SOCK_STREAM.rawValue)
    static let seqpacket = Int32(SOCK_SEQPACKET.rawValue)

    private static func address(_ path: String) throws -> sockaddr_un {
        var a = sockaddr_un()
        a.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: a.sun_path) else { throw TestSupportError("path too long: \(path)") }
        withUnsafeMutableBytes(of: &a.sun_path) { p in
            for (i, b) in bytes.enumerated() { p[i] = b }
            p[bytes.count] = 0
        }
        return a
    }

    /// Blocking calls fail after this (a safety net so a broken device fails a test instead of hanging it).
    static func setTimeouts(_ fd: Int32, seconds: Int = 30) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    static func listen(_ path: String, type: Int32 = stream, backlog: Int32 = 128) throws -> Int32 {
        let fd = socket(AF_UNIX, type | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TestSupportError("socket: errno \(errno)") }
        var a = try address(path)
        let r = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard r == 0, Glibc.listen(fd, backlog) == 0 else {
            let e = errno
            close(fd)
            throw TestSupportError("bind/listen \(path): errno \(e)")
        }
        return fd
    }

    static func connect(_ path: String, type: Int32 = stream) throws -> Int32 {
        let fd = socket(AF_UNIX, type | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TestSupportError("socket: errno \(errno)") }
        var a = try address(path)
        let r = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard r == 0 else {
            let e = errno
            close(fd)
            throw TestSupportError("connect \(path): errno \(e)")
        }
        setTimeouts(fd)
        return fd
    }

    /// Waits (safety net) for a connection on a listener.
    static func accept(_ lfd: Int32, timeout: Double = 20) throws -> Int32 {
        var p = pollfd(fd: lfd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, Int32(timeout * 1000)) == 1 else { throw TestSupportError("nothing connected to the host listener") }
        let fd = vdv_accept(lfd)
        guard fd >= 0 else { throw TestSupportError("accept: errno \(-fd)") }
        setTimeouts(fd)
        return fd
    }

    static func readable(_ fd: Int32, timeout: Double) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, Int32(timeout * 1000)) == 1
    }

    static func writeAll(_ fd: Int32, _ b: [UInt8]) throws {
        var off = 0
        while off < b.count {
            let n = b.withUnsafeBytes { send(fd, $0.baseAddress! + off, b.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw TestSupportError("host write: errno \(errno) after \(off) of \(b.count) bytes") }
            off += n
        }
    }

    static func readExactly(_ fd: Int32, _ count: Int) throws -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: count)
        var off = 0
        while off < count {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress! + off, count - off) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw TestSupportError("host read: \(n == 0 ? "EOF" : "errno \(errno)") after \(off) of \(count) bytes") }
            off += n
        }
        return buf
    }

    enum End: Equatable { case eof, reset }

    /// Reads until the peer closes: EOF, or ECONNRESET (a Unix peer closed with our data unread).
    static func readToEnd(_ fd: Int32, limit: Int = 64 << 20) throws -> (data: [UInt8], end: End) {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while out.count <= limit {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n == 0 { return (out, .eof) }
            if n < 0 && errno == ECONNRESET { return (out, .reset) }
            guard n > 0 else { throw TestSupportError("host read: errno \(errno) after \(out.count) bytes (no EOF)") }
            out += buf[0..<n]
        }
        throw TestSupportError("host read more than \(limit) bytes without EOF")
    }

    /// One line up to and including "\n"; whatever was read if the peer closed first (nil end if it did).
    static func readLine(_ fd: Int32, max: Int = 256) throws -> (line: String, closed: Bool) {
        var out: [UInt8] = []
        var b: UInt8 = 0
        while out.count < max {
            let n = read(fd, &b, 1)
            if n < 0 && errno == EINTR { continue }
            if n == 0 || (n < 0 && errno == ECONNRESET) { return (String(decoding: out, as: UTF8.self), true) }
            guard n == 1 else { throw TestSupportError("host read line: errno \(errno)") }
            out.append(b)
            if b == UInt8(ascii: "\n") { break }
        }
        return (String(decoding: out, as: UTF8.self), false)
    }

    /// One SEQPACKET message (recv keeps boundaries); MSG_TRUNC would mean our buffer was too small.
    static func recvMessage(_ fd: Int32, max: Int = 2 << 20) throws -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: max)
        while true {
            var iov = iovec()
            var mh = msghdr()
            let n: Int = buf.withUnsafeMutableBytes { p in
                iov.iov_base = p.baseAddress
                iov.iov_len = p.count
                return withUnsafeMutablePointer(to: &iov) { ip in
                    mh.msg_iov = ip
                    mh.msg_iovlen = 1
                    return recvmsg(fd, &mh, 0)
                }
            }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw TestSupportError("host recvmsg: errno \(errno)") }
            guard mh.msg_flags & Int32(MSG_TRUNC) == 0 else { throw TestSupportError("message larger than \(max) bytes") }
            return Array(buf[0..<n])
        }
    }

    static func sendMessage(_ fd: Int32, _ m: [UInt8]) throws {
        let n = m.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard n == m.count else { throw TestSupportError("host send of a \(m.count)-byte message: \(n), errno \(errno)") }
    }
}

// MARK: - base test case

/// One served vsock export as a test sees it.
struct VsockServed {
    let export: VhostUserExport
    let socket: String
    let uds: String
    let cid: UInt64

    var device: VsockDevice { export.device as! VsockDevice }
    func counter(_ c: QueueStats.Counter, _ q: Int) -> UInt64 { export.queueStats[q].get(c) }
    /// Host path a guest connection to host port `port` is bridged to.
    func portPath(_ port: UInt32) -> String { "\(uds)_\(port)" }
}

class VsockTestCase: XCTestCase {
    var dir: String!
    var pollers: PollerGroup?
    var exports: [Export] = []
    var drivers: [VsockTestDriver] = []
    var fdsToClose: [Int32] = []
    let logs = LogStore()

    override func setUpWithError() throws {
        try super.setUpWithError()
        // The daemon ignores SIGPIPE (vdv_block_term_signals); here the device runs inside the test process.
        signal(SIGPIPE, SIG_IGN)
        dir = try makeTemporaryDirectory("/tmp/vsk-")
    }

    override func tearDown() {
        drivers.removeAll()
        for e in exports.reversed() { e.stop() }
        exports.removeAll()
        for f in fdsToClose { close(f) }
        fdsToClose.removeAll()
        pollers?.stopAll()
        pollers = nil
        if let dir { try? FileManager.default.removeItem(atPath: dir) }
        if let run = testRun, run.totalFailureCount > 0 {
            print("---- export log of \(name) ----")
            for l in logs.all.suffix(400) { print(l) }
        }
        super.tearDown()
    }

    var logger: Logger {
        let store = logs
        return Logger(label: "vdevd-vsock-test") { _ in CaptureLogHandler(store: store) }
    }

    func pollerGroup(count: Int = 1) throws -> PollerGroup {
        if let p = pollers { return p }
        let p = try PollerGroup(count: count)
        pollers = p
        return p
    }

    func path(_ name: String) -> String { "\(dir!)/\(name)" }

    /// A group name no other test uses (the registry is process-wide).
    func uniqueGroup(_ tag: String) -> String { "\(tag)\(UInt32.random(in: 0...UInt32.max))" }

    /// Serves a vsock export through ExportSpec.parse + ExportFactory.make; `options` is appended to the spec.
    func serve(id: String = "vs0", cid: UInt64 = 3, options: String = "") throws -> VsockServed {
        let sock = path("\(id).sock")
        let uds = path("\(id).vsock")
        var text = "vhost-user-vsock,id=\(id),guest-cid=\(cid),socket=\(sock),uds-path=\(uds)"
        if !options.isEmpty { text += "," + options }
        let spec = try ExportSpec.parse(text)
        let e = try ExportFactory.make(spec, pollers: try pollerGroup(), logger: logger)
        e.start()
        exports.append(e)
        guard let v = e as? VhostUserExport else { throw TestSupportError("not a VhostUserExport") }
        return VsockServed(export: v, socket: sock, uds: uds, cid: cid)
    }

    /// The guest: a vsock driver over the export's vhost-user socket.
    func guest(_ s: VsockServed, bufAlloc: UInt32 = 256 * 1024, features: UInt64? = nil) throws -> VsockTestDriver {
        let d = try VsockTestDriver(socket: s.socket, bufAlloc: bufAlloc, features: features)
        drivers.append(d)
        return d
    }

    func listen(_ path: String, type: Int32 = Host.stream, backlog: Int32 = 128) throws -> Int32 {
        let fd = try Host.listen(path, type: type, backlog: backlog)
        fdsToClose.append(fd)
        return fd
    }

    func accept(_ lfd: Int32) throws -> Int32 {
        let fd = try Host.accept(lfd)
        fdsToClose.append(fd)
        return fd
    }

    /// Guest connects to host port `port`; the host accepts it. Fails the test on RST.
    func open(_ d: VsockTestDriver, _ lfd: Int32, port: UInt32, localPort: UInt32, type: UInt16 = SockType.stream)
        throws -> (VsockTestDriver.Conn, Int32) {
        guard let c = try d.connect(port: port, localPort: localPort, type: type) else {
            throw TestSupportError("guest connect to port \(port) was reset")
        }
        return (c, try accept(lfd))
    }

    /// A host program's connection through uds-path: `CONNECT <port>\n` (plus `extra` in the same write).
    func hostConnect(_ s: VsockServed, port: UInt32, extra: [UInt8] = []) throws -> Int32 {
        let fd = try Host.connect(s.uds)
        fdsToClose.append(fd)
        try Host.writeAll(fd, Array("CONNECT \(port)\n".utf8) + extra)
        return fd
    }

    /// Closes a host fd the test opened (and stops tearDown from closing its number again).
    func closeHost(_ fd: Int32) {
        fdsToClose.removeAll { $0 == fd }
        close(fd)
    }

    /// The guest receives until `conn` has `count` bytes (the timeout is a safety net).
    func receive(_ d: VsockTestDriver, _ c: VsockTestDriver.Conn, count: Int, timeout: Double = 30) throws -> [UInt8] {
        guard d.wait(timeout: timeout, { c.received.count >= count || c.reset }) else {
            throw TestSupportError("guest received \(c.received.count) of \(count) bytes")
        }
        return c.received
    }

    /// Every packet since the last call, for a connection; `poll` files them, this just remembers them.
    func packets(_ d: VsockTestDriver, where cond: (VsockTestDriver.Packet) -> Bool, timeout: Double = 10,
                 until done: ([VsockTestDriver.Packet]) -> Bool) -> [VsockTestDriver.Packet] {
        var seen: [VsockTestDriver.Packet] = []
        let deadline = Date().addingTimeInterval(timeout)
        repeat {
            seen += d.poll().filter(cond)
            if done(seen) { return seen }
            usleep(100)
        } while Date() < deadline
        return seen
    }

    /// A header from this guest (hostile tests fill in the rest).
    func rawHeader(_ d: VsockTestDriver, dstCID: UInt64 = hostCID, srcPort: UInt32, dstPort: UInt32, op: UInt16,
                   type: UInt16 = SockType.stream) -> VsockTestDriver.Header {
        var h = VsockTestDriver.Header()
        h.srcCID = d.guestCID
        h.dstCID = dstCID
        h.srcPort = srcPort
        h.dstPort = dstPort
        h.op = op
        h.type = type
        h.bufAlloc = d.bufAlloc
        return h
    }

    /// A round trip through the device's tx queue: CREDIT_REQUEST on a live connection, answered by a
    /// CREDIT_UPDATE. The device handles tx packets in order, so everything sent before has been handled.
    @discardableResult
    func barrier(_ d: VsockTestDriver, _ c: VsockTestDriver.Conn) throws -> VsockTestDriver.Packet {
        try d.sendPacket(d.header(c, .creditRequest))
        let got = packets(d, where: {
            $0.header.op == Op.creditUpdate && $0.header.dstPort == c.localPort && $0.header.srcPort == c.peerPort
        }, until: { !$0.isEmpty })
        guard let p = got.first else { throw TestSupportError("no CREDIT_UPDATE for a CREDIT_REQUEST") }
        return p
    }

    /// The same round trip without a connection: a packet for a port nobody uses is answered by RST.
    func barrier(_ d: VsockTestDriver, probePort: UInt32 = 0xBA44) throws {
        let h = rawHeader(d, srcPort: probePort, dstPort: probePort, op: Op.creditRequest)
        try d.sendPacket(h)
        let got = packets(d, where: { $0.header.op == Op.rst && $0.header.dstPort == probePort }, until: { !$0.isEmpty })
        guard !got.isEmpty else { throw TestSupportError("no RST for the barrier probe") }
        d.unmatched.removeAll { $0.header.dstPort == probePort }
    }

    /// Sends `data[start...]` within the peer's credit until all is sent or the peer has no room left. When
    /// credit runs out, a CREDIT_REQUEST round trip learns the device's exact fwd_cnt; still no credit then
    /// means the device holds buf_alloc unsent bytes. Returns how far it got.
    func sendUntilStalled(_ d: VsockTestDriver, _ c: VsockTestDriver.Conn, _ data: [UInt8], from start: Int = 0,
                          chunk: Int = 65536) throws -> Int {
        var off = start
        while off < data.count {
            d.poll()
            let n = min(chunk, data.count - off, Int(c.credit))
            if n > 0 {
                try d.sendPacket(d.header(c, .rw), Array(data[off..<(off + n)]))
                c.txCnt &+= UInt32(n)
                off += n
                continue
            }
            try barrier(d, c)
            if c.credit == 0 { return off }
        }
        return off
    }
}
