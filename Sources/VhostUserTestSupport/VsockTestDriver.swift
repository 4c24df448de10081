#if canImport(Glibc)
import Glibc
#endif

/// A guest's virtio-vsock driver over the test frontend (virtio 1.3, 5.10), written independently of
/// vdevd's device: rx buffers posted up front, tx packets from a pool, credit kept like Linux keeps it.
/// Single-threaded: call `poll()` (or the waiting helpers) to move packets.
public final class VsockTestDriver {
    public struct Header: Equatable {
        public var srcCID: UInt64 = 0, dstCID: UInt64 = 0
        public var srcPort: UInt32 = 0, dstPort: UInt32 = 0
        public var len: UInt32 = 0
        public var type: UInt16 = 1, op: UInt16 = 0
        public var flags: UInt32 = 0, bufAlloc: UInt32 = 0, fwdCnt: UInt32 = 0
        public init() {}

        public var bytes: [UInt8] {
            var b: [UInt8] = []
            b.le(srcCID); b.le(dstCID); b.le(srcPort); b.le(dstPort); b.le(len)
            b.le(type); b.le(op); b.le(flags); b.le(bufAlloc); b.le(fwdCnt)
            return b
        }

        public init(_ b: [UInt8]) {
            srcCID = b.u64(0); dstCID = b.u64(8); srcPort = b.u32(16); dstPort = b.u32(20); len = b.u32(24)
            type = UInt16(b[28]) | UInt16(b[29]) << 8
            op = UInt16(b[30]) | UInt16(b[31]) << 8
            flags = b.u32(32); bufAlloc = b.u32(36); fwdCnt = b.u32(40)
        }
    }

    public enum Op: UInt16 { case request = 1, response, rst, shutdown, rw, creditUpdate, creditRequest }
    public struct Packet { public var header: Header; public var payload: [UInt8] }

    /// A connection as the guest sees it; credit fields follow 5.10.6.3.
    public final class Conn {
        public let localPort: UInt32
        public let peerCID: UInt64
        public let peerPort: UInt32
        public let type: UInt16
        public var peerBufAlloc: UInt32 = 0
        public var peerFwdCnt: UInt32 = 0
        public var txCnt: UInt32 = 0
        public var fwdCnt: UInt32 = 0
        public var advertised: UInt32 = 0
        public var received: [UInt8] = []
        public var messages: [[UInt8]] = []
        public var partial: [UInt8] = []
        public var peerShutdown: UInt32 = 0
        public var reset = false
        /// Every payload byte received on this connection.
        public var totalReceived = 0
        /// Packets whose fwd_cnt was behind one received before (a stale credit report: 5.10.6.3 counters
        /// only grow), and the largest step back seen.
        public var fwdCntRegressions = 0
        public var largestFwdCntRegression: UInt32 = 0
        /// When false, payloads are counted but not kept (benchmarks).
        public var keepData = true
        /// When false, received bytes are not counted as consumed (a slow reader: credit is not returned).
        public var consuming = true
        init(localPort: UInt32, peerCID: UInt64, peerPort: UInt32, type: UInt16) {
            self.localPort = localPort
            self.peerCID = peerCID
            self.peerPort = peerPort
            self.type = type
        }
        public var credit: UInt32 {
            let inFlight = txCnt &- peerFwdCnt
            return inFlight >= peerBufAlloc ? 0 : peerBufAlloc - inFlight
        }
    }

    public let frontend: VhostUserFrontend
    public let ram: GuestRAM
    public let rxq: DriverVirtqueue
    public let txq: DriverVirtqueue
    public let guestCID: UInt64
    public let bufAlloc: UInt32
    public let rxBufferSize: UInt32
    private let kicks: [Int32]
    private let calls: [Int32]
    private var rxBuffers: [UInt16: UInt64] = [:]
    private var txFree: [(UInt64, UInt64)] = []
    private var txInUse: [UInt16: (UInt64, UInt64)] = [:]
    public struct ConnKey: Hashable {
        public var local: UInt32
        public var cid: UInt64
        public var port: UInt32
    }
    public private(set) var conns: [ConnKey: Conn] = [:]
    /// Packets that matched no connection (RSTs for unknown ports, requests from the host, events).
    public var unmatched: [Packet] = []
    public static let maxPayload = 65536
    /// While true, used rx buffers are read but not given back (a guest whose rx queue runs dry);
    /// they are reposted by the first `poll()` after it turns false.
    public var holdRx = false
    private var heldRx: [UInt16] = []
    /// rx buffers the driver holds back now (`holdRx`).
    public var heldRxCount: Int { heldRx.count }

    public init(socket: String, queueSize: UInt16 = 256, rxBufferSize: UInt32 = 4096, bufAlloc: UInt32 = 256 * 1024,
                features: UInt64? = nil) throws {
        frontend = try VhostUserFrontend(path: socket)
        ram = try GuestRAM(size: 64 << 20, guestAddress: 0x4000_0000)
        let offered = try frontend.getU64(.getFeatures)
        let pf = try frontend.getU64(.getProtocolFeatures)
        try frontend.setProtocolFeatures(pf & ((1 << 0) | (1 << 3) | (1 << 9) | (1 << 15)))
        try frontend.command(.setOwner)
        let cfg = try frontend.getConfig(offset: 0, size: 8)
        guestCID = cfg.u64(0)
        let acked = ((features ?? offered) & offered) | VhostUserFrontend.protocolFeaturesBit
        try frontend.setFeatures(acked)
        try frontend.setMemTable([ram])
        self.bufAlloc = bufAlloc
        self.rxBufferSize = rxBufferSize
        rxq = DriverVirtqueue(ram: ram, size: queueSize)
        txq = DriverVirtqueue(ram: ram, size: queueSize)
        rxq.eventIdx = acked & (1 << 29) != 0
        txq.eventIdx = rxq.eventIdx
        // Like QEMU's vhost-user-vsock: the backend runs rx and tx; the event queue stays with the frontend.
        let (k0, c0) = try frontend.startVring(0, rxq)
        let (k1, c1) = try frontend.startVring(1, txq)
        kicks = [k0, k1]
        calls = [c0, c1]
        for _ in 0..<Int(queueSize) {
            let g = ram.allocate(UInt64(44 + rxBufferSize))
            let head = rxq.add([.init(gpa: g, length: 44 + rxBufferSize, writable: true)])
            rxBuffers[head] = g
        }
        for _ in 0..<Int(queueSize / 2) {
            txFree.append((ram.allocate(44), ram.allocate(UInt64(VsockTestDriver.maxPayload))))
        }
        kick(kicks[0])
    }

    deinit { for f in kicks + calls { close(f) } }

    static func key(_ local: UInt32, _ cid: UInt64, _ port: UInt32) -> ConnKey { ConnKey(local: local, cid: cid, port: port) }

    // MARK: sending

    /// Sends one packet as given (hostile tests use it to lie). Waits for a tx slot.
    public func sendPacket(_ h: Header, _ payload: [UInt8] = [], lengthOverride: UInt32? = nil) throws {
        precondition(payload.count <= VsockTestDriver.maxPayload)
        let deadline = monotonicSeconds() + 10
        while txFree.isEmpty {
            reapTx()
            guard monotonicSeconds() < deadline else { throw TestSupportError("tx queue never drained") }
            if txFree.isEmpty { usleep(50) }
        }
        let (hg, pg) = txFree.removeLast()
        var hh = h
        hh.len = lengthOverride ?? UInt32(payload.count)
        ram.write(hg, hh.bytes)
        var bufs = [DriverVirtqueue.Buffer(gpa: hg, length: 44, writable: false)]
        if !payload.isEmpty {
            ram.write(pg, payload)
            bufs.append(.init(gpa: pg, length: UInt32(payload.count), writable: false))
        }
        let head = txq.add(bufs)
        txInUse[head] = (hg, pg)
        kick(kicks[1])
    }

    /// Notifies the device of tx buffers added by hand (hostile tests build their own chains on `txq`).
    public func kickTx() { kick(kicks[1]) }

    private func reapTx() {
        while let u = txq.popUsed() {
            if let slot = txInUse.removeValue(forKey: u.head) { txFree.append(slot) }
        }
    }

    public func header(_ c: Conn, _ op: Op, flags: UInt32 = 0) -> Header {
        var h = Header()
        h.srcCID = guestCID
        h.dstCID = c.peerCID
        h.srcPort = c.localPort
        h.dstPort = c.peerPort
        h.type = c.type
        h.op = op.rawValue
        h.flags = flags
        h.bufAlloc = bufAlloc
        h.fwdCnt = c.fwdCnt
        c.advertised = c.fwdCnt
        return h
    }

    /// Opens a connection (REQUEST); returns it once the peer answers RESPONSE, nil on RST.
    public func connect(port: UInt32, cid: UInt64 = 2, localPort: UInt32, type: UInt16 = 1, timeout: Double = 10) throws -> Conn? {
        let c = Conn(localPort: localPort, peerCID: cid, peerPort: port, type: type)
        conns[Self.key(localPort, cid, port)] = c
        try sendPacket(header(c, .request))
        let deadline = monotonicSeconds() + timeout
        while monotonicSeconds() < deadline {
            for p in poll() where p.header.srcPort == port && p.header.dstPort == localPort {
                if p.header.op == Op.response.rawValue { return c }
                if p.header.op == Op.rst.rawValue { conns[Self.key(localPort, cid, port)] = nil; return nil }
            }
            if c.peerBufAlloc > 0 && !c.reset { return c }
            if c.reset { conns[Self.key(localPort, cid, port)] = nil; return nil }
            usleep(100)
        }
        throw TestSupportError("no answer to REQUEST for port \(port)")
    }

    /// Accepts a REQUEST the host sent (host-initiated connection through uds-path).
    public func accept(port: UInt32, timeout: Double = 10) throws -> Conn {
        let deadline = monotonicSeconds() + timeout
        while monotonicSeconds() < deadline {
            _ = poll()
            if let i = unmatched.firstIndex(where: { $0.header.op == Op.request.rawValue && $0.header.dstPort == port }) {
                let p = unmatched.remove(at: i)
                let c = Conn(localPort: port, peerCID: p.header.srcCID, peerPort: p.header.srcPort, type: p.header.type)
                c.peerBufAlloc = p.header.bufAlloc
                c.peerFwdCnt = p.header.fwdCnt
                conns[Self.key(port, p.header.srcCID, p.header.srcPort)] = c
                try sendPacket(header(c, .response))
                return c
            }
            usleep(100)
        }
        throw TestSupportError("no REQUEST for port \(port)")
    }

    /// Sends bytes as RW packets within the peer's credit (waits for credit updates as needed).
    public func send(_ c: Conn, _ data: [UInt8], chunk: Int = 65536, eom: Bool = false, timeout: Double = 20) throws {
        var off = 0
        let deadline = monotonicSeconds() + timeout
        repeat {
            _ = poll()
            let n = min(chunk, data.count - off, Int(c.credit))
            if n == 0 && !(data.isEmpty && off == 0) {
                guard monotonicSeconds() < deadline else { throw TestSupportError("no credit from the peer") }
                usleep(100)
                continue
            }
            let last = off + n == data.count
            try sendPacket(header(c, .rw, flags: eom && last ? 3 : 0), Array(data[off..<(off + n)]))
            c.txCnt &+= UInt32(n)
            off += n
        } while off < data.count
    }

    /// Benchmark path: RW packets of `size` bytes whose payload is whatever the tx buffers hold (no copy).
    /// Returns the bytes sent before `deadline` (CLOCK_MONOTONIC seconds) as credit allowed.
    public func sendBulk(_ c: Conn, size: Int, until deadline: Double) throws -> Int {
        var total = 0
        while monotonicSeconds() < deadline {
            poll()
            let n = min(size, Int(c.credit))
            if n == 0 || txFree.isEmpty { continue }
            let (hg, pg) = txFree.removeLast()
            var h = header(c, .rw)
            h.len = UInt32(n)
            ram.write(hg, h.bytes)
            let head = txq.add([.init(gpa: hg, length: 44, writable: false), .init(gpa: pg, length: UInt32(n), writable: false)])
            txInUse[head] = (hg, pg)
            let old = txq.availIndex &- 1
            if txq.needsKick(since: old) { kick(kicks[1]) }
            c.txCnt &+= UInt32(n)
            total += n
        }
        return total
    }

    public func shutdown(_ c: Conn, flags: UInt32) throws { try sendPacket(header(c, .shutdown, flags: flags)) }
    public func reset(_ c: Conn) throws {
        try sendPacket(header(c, .rst))
        conns[Self.key(c.localPort, c.peerCID, c.peerPort)] = nil
    }

    /// Marks received bytes consumed and tells the peer (a reader catching up).
    public func consume(_ c: Conn) throws {
        c.consuming = true
        c.fwdCnt = UInt32(truncatingIfNeeded: c.totalReceived)
        try sendPacket(header(c, .creditUpdate))
    }

    // MARK: receiving

    /// Takes everything the device put in rx buffers, reposts the buffers, and files packets by connection.
    @discardableResult
    public func poll() -> [Packet] {
        reapTx()
        var out: [Packet] = []
        var reposted = false
        // rx buffers keep their descriptor for life: a used one is simply made available again.
        let oldAvail = rxq.availIndex
        if !holdRx && !heldRx.isEmpty {
            for h in heldRx { rxq.publish(h) }
            heldRx.removeAll()
            reposted = true
        }
        while let u = rxq.popUsedFixed() {
            guard let g = rxBuffers[u.head] else { continue }
            if u.length >= 44 {
                let hp = ram.pointer(g)
                var h = Header()
                h.srcCID = hp.loadUnaligned(as: UInt64.self)
                h.dstCID = hp.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
                h.srcPort = hp.loadUnaligned(fromByteOffset: 16, as: UInt32.self)
                h.dstPort = hp.loadUnaligned(fromByteOffset: 20, as: UInt32.self)
                h.len = hp.loadUnaligned(fromByteOffset: 24, as: UInt32.self)
                h.type = hp.loadUnaligned(fromByteOffset: 28, as: UInt16.self)
                h.op = hp.loadUnaligned(fromByteOffset: 30, as: UInt16.self)
                h.flags = hp.loadUnaligned(fromByteOffset: 32, as: UInt32.self)
                h.bufAlloc = hp.loadUnaligned(fromByteOffset: 36, as: UInt32.self)
                h.fwdCnt = hp.loadUnaligned(fromByteOffset: 40, as: UInt32.self)
                let n = max(0, min(Int(h.len), Int(min(u.length, 44 + rxBufferSize)) - 44))
                let c = conns[Self.key(h.dstPort, h.srcCID, h.srcPort)]
                if let c, !c.keepData, h.op == Op.rw.rawValue {
                    // Count only: no copy out of guest memory.
                    file(Packet(header: h, payload: []), countedBytes: n)
                } else {
                    out.append(Packet(header: h, payload: n > 0 ? ram.read(g + 44, n) : []))
                }
            }
            if holdRx {
                heldRx.append(u.head)
            } else {
                rxq.publish(u.head)
                reposted = true
            }
        }
        if reposted && rxq.needsKick(since: oldAvail) { kick(kicks[0]) }
        for p in out { file(p) }
        return out
    }

    private func file(_ p: Packet, countedBytes: Int? = nil) {
        let h = p.header
        guard let c = conns[Self.key(h.dstPort, h.srcCID, h.srcPort)] else {
            unmatched.append(p)
            return
        }
        c.peerBufAlloc = h.bufAlloc
        let back = c.peerFwdCnt &- h.fwdCnt
        if back != 0 && back < 1 << 31 {
            c.fwdCntRegressions += 1
            c.largestFwdCntRegression = max(c.largestFwdCntRegression, back)
        }
        c.peerFwdCnt = h.fwdCnt
        switch Op(rawValue: h.op) {
        case .rw:
            let n = countedBytes ?? p.payload.count
            c.totalReceived += n
            if countedBytes != nil {
            } else if c.type == 2 {
                c.partial += p.payload
                if h.flags & 1 != 0 { c.messages.append(c.partial); c.partial = [] }
            } else {
                c.received += p.payload
            }
            if c.consuming {
                c.fwdCnt &+= UInt32(n)
                // Like Linux: return credit once half the buffer was consumed since the last update.
                if c.fwdCnt &- c.advertised >= bufAlloc / 2 { try? sendPacket(header(c, .creditUpdate)) }
            }
        case .shutdown: c.peerShutdown |= h.flags
        case .rst: c.reset = true
        case .creditRequest: try? sendPacket(header(c, .creditUpdate))
        default: break
        }
    }

    /// Polls until `cond` holds or `timeout` passes (a safety net, not a timing assertion).
    public func wait(timeout: Double = 10, _ cond: () -> Bool) -> Bool {
        let deadline = monotonicSeconds() + timeout
        while monotonicSeconds() < deadline {
            poll()
            if cond() { return true }
            usleep(100)
        }
        return cond()
    }
}
