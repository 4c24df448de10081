#if canImport(Glibc)
import Glibc
#endif
import CVdevd

/// A vhost-user frontend that plays QEMU's part over a real Unix socket (docs/interop/vhost-user.rst).
/// Message codes and layouts are written here independently of the backend's, so tests check both.
public final class VhostUserFrontend {
    public enum Request: UInt32 {
        case getFeatures = 1, setFeatures, setOwner, resetOwner, setMemTable, setLogBase, setLogFD, setVringNum,
             setVringAddr, setVringBase, getVringBase, setVringKick, setVringCall, setVringErr,
             getProtocolFeatures, setProtocolFeatures, getQueueNum, setVringEnable, sendRARP, netSetMTU
        case getConfig = 24, setConfig = 25
        case getInflightFD = 31, setInflightFD = 32
        case resetDevice = 34
        case getMaxMemSlots = 36, addMemReg = 37, remMemReg = 38, setStatus = 39, getStatus = 40
    }

    public static let protocolFeaturesBit: UInt64 = 1 << 30
    public static let needReply: UInt32 = 1 << 3

    public let fd: Int32
    public var replyAck = false

    public init(path: String, timeoutSeconds: Double = 10) throws {
        let deadline = monotonicSeconds() + timeoutSeconds
        var fd: Int32 = -1
        while true {
            fd = vdv_unix_connect(path, Int32(SOCK_STREAM.rawValue))
            if fd >= 0 || monotonicSeconds() > deadline { break }
            usleep(20_000)
        }
        guard fd >= 0 else { throw TestSupportError("connect \(path): \(-fd)") }
        self.fd = fd
        // A receive timeout so a backend that never answers fails the test instead of hanging it.
        var tv = timeval(tv_sec: Int(timeoutSeconds), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    public func disconnect() { shutdown(fd, Int32(SHUT_RDWR)) }

    // MARK: raw messages

    public func sendRaw(_ bytes: [UInt8], fds: [Int32] = []) throws {
        var f = fds
        let n = bytes.withUnsafeBytes { b in
            f.withUnsafeMutableBufferPointer { vdv_send_with_fds(fd, b.baseAddress, UInt64(b.count), $0.baseAddress, UInt32($0.count)) }
        }
        guard n == bytes.count else { throw TestSupportError("send: \(n)") }
    }

    public func send(_ request: UInt32, payload: [UInt8] = [], fds: [Int32] = [], flags: UInt32 = 1) throws {
        var m: [UInt8] = []
        m.le(request)
        m.le(flags)
        m.le(UInt32(payload.count))
        m += payload
        try sendRaw(m, fds: fds)
    }

    /// Reads one reply: (request, flags, payload). Throws on EOF or timeout.
    public func receive() throws -> (request: UInt32, flags: UInt32, payload: [UInt8]) {
        let header = try readExactly(12)
        let req = header.u32(0), flags = header.u32(4), size = Int(header.u32(8))
        let payload = size > 0 ? try readExactly(size) : []
        return (req, flags, payload)
    }

    /// Sends a request whose reply carries an fd (GET_INFLIGHT_FD): returns the reply's payload and the fd.
    public func callReceivingFD(_ request: UInt32, payload: [UInt8]) throws -> (payload: [UInt8], fd: Int32?) {
        try send(request, payload: payload)
        var header = [UInt8](repeating: 0, count: 12)
        var fds = [Int32](repeating: -1, count: 4)
        var nfds: UInt32 = 0
        var truncated: Int32 = 0
        let n = header.withUnsafeMutableBytes { h in
            fds.withUnsafeMutableBufferPointer { vdv_recv_with_fds(fd, h.baseAddress, 12, $0.baseAddress, 4, &nfds, &truncated) }
        }
        guard n == 12 else { throw TestSupportError("reply header: \(n)") }
        let size = Int(header.u32(8))
        let body = size > 0 ? try readExactly(size) : []
        guard header.u32(0) == request, header.u32(4) & 0x4 != 0 else {
            throw TestSupportError("reply to \(request) has request \(header.u32(0)) flags \(header.u32(4))")
        }
        return (body, nfds > 0 ? fds[0] : nil)
    }

    private func readExactly(_ n: Int) throws -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: n)
        var off = 0
        while off < n {
            let r = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress! + off, n - off) }
            if r < 0 && errno == EINTR { continue }
            guard r > 0 else { throw TestSupportError(r == 0 ? "backend closed the connection" : "read: errno \(errno)") }
            off += r
        }
        return buf
    }

    /// True if the backend has closed the connection (EOF within the timeout).
    public func backendClosed(timeout: Double = 5) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, Int32(timeout * 1000)) > 0 else { return false }
        var b: UInt8 = 0
        return recv(fd, &b, 1, Int32(MSG_PEEK)) == 0
    }

    // MARK: typed requests

    public func call(_ r: Request, payload: [UInt8] = [], fds: [Int32] = []) throws -> [UInt8] {
        try send(r.rawValue, payload: payload, fds: fds)
        let reply = try receive()
        guard reply.request == r.rawValue, reply.flags & 0x4 != 0 else {
            throw TestSupportError("reply to \(r) has request \(reply.request) flags \(reply.flags)")
        }
        return reply.payload
    }

    /// A request with no reply of its own; with REPLY_ACK it asks for one and returns the ack value.
    @discardableResult
    public func command(_ r: Request, payload: [UInt8] = [], fds: [Int32] = []) throws -> UInt64? {
        guard replyAck else {
            try send(r.rawValue, payload: payload, fds: fds)
            return nil
        }
        try send(r.rawValue, payload: payload, fds: fds, flags: 1 | VhostUserFrontend.needReply)
        let reply = try receive()
        guard reply.request == r.rawValue, reply.payload.count == 8 else { throw TestSupportError("bad ack to \(r)") }
        return reply.payload.u64(0)
    }

    public func getU64(_ r: Request) throws -> UInt64 {
        let p = try call(r)
        guard p.count == 8 else { throw TestSupportError("\(r) reply of \(p.count) bytes") }
        return p.u64(0)
    }

    public func u64Payload(_ v: UInt64) -> [UInt8] { var p: [UInt8] = []; p.le(v); return p }

    public func setFeatures(_ f: UInt64) throws { try command(.setFeatures, payload: u64Payload(f)) }

    public func setProtocolFeatures(_ f: UInt64) throws {
        try command(.setProtocolFeatures, payload: u64Payload(f))
        replyAck = f & (1 << 3) != 0
    }

    public func setMemTable(_ regions: [GuestRAM]) throws {
        var p: [UInt8] = []
        p.le(UInt32(regions.count))
        p.le(UInt32(0))
        for r in regions { p += regionPayload(r) }
        try command(.setMemTable, payload: p, fds: regions.map(\.fd))
    }

    public func regionPayload(_ r: GuestRAM) -> [UInt8] {
        var p: [UInt8] = []
        p.le(r.guestAddress)
        p.le(r.size)
        p.le(r.userAddress)
        p.le(UInt64(0))
        return p
    }

    @discardableResult
    public func addMemReg(_ r: GuestRAM) throws -> UInt64? {
        try command(.addMemReg, payload: [UInt8](repeating: 0, count: 8) + regionPayload(r), fds: [r.fd])
    }

    @discardableResult
    public func remMemReg(_ r: GuestRAM) throws -> UInt64? {
        try command(.remMemReg, payload: [UInt8](repeating: 0, count: 8) + regionPayload(r))
    }

    public func vringState(_ index: UInt32, _ num: UInt32) -> [UInt8] {
        var p: [UInt8] = []
        p.le(index)
        p.le(num)
        return p
    }

    public func getVringBase(_ index: UInt32) throws -> UInt32 {
        let p = try call(.getVringBase, payload: vringState(index, 0))
        guard p.count == 8, p.u32(0) == index else { throw TestSupportError("GET_VRING_BASE reply \(p)") }
        return p.u32(4)
    }

    public func getConfig(offset: UInt32, size: UInt32) throws -> [UInt8] {
        var p: [UInt8] = []
        p.le(offset)
        p.le(size)
        p.le(UInt32(0))
        p += [UInt8](repeating: 0, count: Int(size))
        let r = try call(.getConfig, payload: p)
        guard r.count == 12 + Int(size) else { throw TestSupportError("GET_CONFIG reply of \(r.count) bytes") }
        return Array(r[12...])
    }

    @discardableResult
    public func setConfig(offset: UInt32, bytes: [UInt8]) throws -> UInt64? {
        var p: [UInt8] = []
        p.le(offset)
        p.le(UInt32(bytes.count))
        p.le(UInt32(0))
        p += bytes
        return try command(.setConfig, payload: p)
    }

    /// Sets up and starts a vring the way QEMU does: num, base, addr, call, kick, enable.
    /// Returns the kick and call eventfds (the test kicks and waits on call).
    public func startVring(_ index: UInt32, _ q: DriverVirtqueue, base: UInt32 = 0, enable: Bool = true) throws
        -> (kick: Int32, call: Int32) {
        try command(.setVringNum, payload: vringState(index, UInt32(q.size)))
        try command(.setVringBase, payload: vringState(index, base))
        var a: [UInt8] = []
        a.le(index)
        a.le(UInt32(0))
        a.le(q.descUserAddress)
        a.le(q.usedUserAddress)
        a.le(q.availUserAddress)
        a.le(UInt64(0))
        try command(.setVringAddr, payload: a)
        let call = vdv_eventfd(0, 1)
        let kick = vdv_eventfd(0, 1)
        try command(.setVringCall, payload: u64Payload(UInt64(index)), fds: [call])
        try command(.setVringKick, payload: u64Payload(UInt64(index)), fds: [kick])
        if enable { try command(.setVringEnable, payload: vringState(index, 1)) }
        return (kick, call)
    }
}

extension Array where Element == UInt8 {
    public mutating func le<T: FixedWidthInteger>(_ v: T) {
        Swift.withUnsafeBytes(of: v.littleEndian) { append(contentsOf: $0) }
    }
    public func u32(_ off: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { $0 | UInt32(self[off + $1]) << (8 * UInt32($1)) }
    }
    public func u64(_ off: Int) -> UInt64 {
        (0..<8).reduce(UInt64(0)) { $0 | UInt64(self[off + $1]) << (8 * UInt64($1)) }
    }
}

/// Kicks an eventfd (the driver notifying the device).
public func kick(_ fd: Int32) {
    var one: UInt64 = 1
    _ = write(fd, &one, 8)
}

/// Reads an eventfd's counter; 0 if nothing was signalled (non-blocking).
public func drainEventFD(_ fd: Int32) -> UInt64 {
    var v: UInt64 = 0
    return read(fd, &v, 8) == 8 ? v : 0
}
