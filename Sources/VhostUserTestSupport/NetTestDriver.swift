#if canImport(Glibc)
import Glibc
#endif
import CVdevd

/// A virtio-net driver over a vhost-user socket, as a guest's would be (virtio 1.3, 5.1.6), written here
/// independently of the backend: rx/tx queue pairs in memfd RAM, frames with a virtio_net_hdr, rx buffers posted
/// on request, frames read back from used rx buffers (merged with MRG_RXBUF).
public final class NetTestDriver {
    // virtio-net feature bits and header layout, from the spec.
    public static let fCsum: UInt64 = 1 << 0
    public static let fGuestCsum: UInt64 = 1 << 1
    public static let fGuestTSO4: UInt64 = 1 << 7
    public static let fGuestTSO6: UInt64 = 1 << 8
    public static let fHostTSO4: UInt64 = 1 << 11
    public static let fHostTSO6: UInt64 = 1 << 12
    public static let fGuestUFO: UInt64 = 1 << 10
    public static let fHostUFO: UInt64 = 1 << 14
    public static let fMrgRxbuf: UInt64 = 1 << 15
    public static let fMQ: UInt64 = 1 << 22
    public static let fVersion1: UInt64 = 1 << 32
    public static let headerSize = 12

    /// The 12-byte struct virtio_net_hdr (with num_buffers).
    public struct Header: Equatable {
        public var flags: UInt8 = 0, gsoType: UInt8 = 0
        public var hdrLen: UInt16 = 0, gsoSize: UInt16 = 0, csumStart: UInt16 = 0, csumOffset: UInt16 = 0
        public var numBuffers: UInt16 = 0
        public init(flags: UInt8 = 0, gsoType: UInt8 = 0, hdrLen: UInt16 = 0, gsoSize: UInt16 = 0, csumStart: UInt16 = 0, csumOffset: UInt16 = 0) {
            self.flags = flags; self.gsoType = gsoType; self.hdrLen = hdrLen; self.gsoSize = gsoSize
            self.csumStart = csumStart; self.csumOffset = csumOffset
        }
        public var bytes: [UInt8] {
            var b: [UInt8] = [flags, gsoType]
            b.le(hdrLen); b.le(gsoSize); b.le(csumStart); b.le(csumOffset); b.le(numBuffers)
            return b
        }
        public init(_ b: [UInt8]) {
            flags = b[0]; gsoType = b[1]
            hdrLen = UInt16(b[2]) | UInt16(b[3]) << 8
            gsoSize = UInt16(b[4]) | UInt16(b[5]) << 8
            csumStart = UInt16(b[6]) | UInt16(b[7]) << 8
            csumOffset = UInt16(b[8]) | UInt16(b[9]) << 8
            numBuffers = UInt16(b[10]) | UInt16(b[11]) << 8
        }
    }

    public struct Received {
        public var header: Header
        public var frame: [UInt8]
        /// Used elements (rx buffers) the frame took.
        public var buffers: Int
        /// Guest addresses of those buffers, in order.
        public var bufferGPAs: [UInt64] = []
    }

    public let frontend: VhostUserFrontend
    public let ram: GuestRAM
    public let features: UInt64
    public let pairs: Int
    public private(set) var rx: [DriverVirtqueue] = []
    public private(set) var tx: [DriverVirtqueue] = []
    public private(set) var rxKick: [Int32] = []
    public private(set) var txKick: [Int32] = []
    private var rxBuffers: [[UInt16: (UInt64, UInt32)]] = []
    private var txBuffers: [UInt16: UInt64] = [:]
    private var freeTx: [(UInt64, Int)] = []
    /// Frames sent whose chains the device has not given back yet.
    public private(set) var txOutstanding = 0

    /// Connects and negotiates `features` (VERSION_1 always), maps `ramSize` bytes of guest RAM and starts
    /// `pairs` rx/tx pairs of `queueSize`.
    /// `extraProtocolFeatures` are acked beside those when offered (LOG_SHMFD for a migration test).
    public init(socket: String, features: UInt64, pairs: Int = 1, queueSize: UInt16 = 256, ramSize: UInt64 = 32 << 20,
                extraProtocolFeatures: UInt64 = 0) throws {
        frontend = try VhostUserFrontend(path: socket)
        ram = try GuestRAM(size: ramSize, guestAddress: 0x10_0000)
        self.features = features | NetTestDriver.fVersion1
        self.pairs = pairs
        let offered = try frontend.getU64(.getFeatures)
        guard offered & self.features == self.features else {
            throw TestSupportError("device offers 0x\(String(offered, radix: 16)), test wants 0x\(String(self.features, radix: 16))")
        }
        try frontend.setFeatures(self.features | VhostUserFrontend.protocolFeaturesBit)
        let proto = try frontend.getU64(.getProtocolFeatures)
        // REPLY_ACK (3) so every command is done when it returns; MQ (0); RARP (2) when offered.
        try frontend.setProtocolFeatures(proto & (1 << 3 | 1 << 0 | 1 << 2 | extraProtocolFeatures))
        try frontend.command(.setOwner)
        try frontend.setMemTable([ram])
        for k in 0..<pairs {
            let r = DriverVirtqueue(ram: ram, size: queueSize)
            let t = DriverVirtqueue(ram: ram, size: queueSize)
            r.eventIdx = false
            t.eventIdx = false
            rx.append(r)
            tx.append(t)
            rxBuffers.append([:])
            rxKick.append(try frontend.startVring(UInt32(2 * k), r).kick)
            txKick.append(try frontend.startVring(UInt32(2 * k + 1), t).kick)
        }
    }

    public var headerSize: Int { NetTestDriver.headerSize }

    /// Posts `count` device-writable buffers of `size` bytes on rx queue `pair`.
    public func postRx(_ count: Int, size: UInt32 = 2048, pair: Int = 0) {
        for _ in 0..<count {
            let gpa = ram.allocate(UInt64(size), alignment: 64)
            ram.fill(gpa, Int(size), byte: 0xee)
            let head = rx[pair].add([.init(gpa: gpa, length: size, writable: true)])
            rxBuffers[pair][head] = (gpa, size)
        }
        kick(rxKick[pair])
    }

    /// Sends one frame (header then frame, as one or two descriptors) on tx queue `pair`; returns the head.
    @discardableResult
    public func send(_ frame: [UInt8], header: Header = Header(), pair: Int = 0, split: Bool = false) -> UInt16 {
        let bytes = header.bytes + frame
        let gpa: UInt64
        if let i = freeTx.firstIndex(where: { $0.1 >= bytes.count }) {
            gpa = freeTx.remove(at: i).0
        } else {
            gpa = ram.allocate(UInt64(max(bytes.count, 2048)), alignment: 64)
        }
        ram.write(gpa, bytes)
        let head: UInt16
        if split {
            head = tx[pair].add([.init(gpa: gpa, length: UInt32(headerSize), writable: false),
                                 .init(gpa: gpa + UInt64(headerSize), length: UInt32(frame.count), writable: false)])
        } else {
            head = tx[pair].add([.init(gpa: gpa, length: UInt32(bytes.count), writable: false)])
        }
        txBuffers[head] = gpa
        txOutstanding += 1
        kick(txKick[pair])
        return head
    }

    /// Waits until every frame sent has been given back (safety-net timeout, not an assertion about time).
    public func waitTxDone(pair: Int = 0, timeout: Double = 20) -> Bool {
        let deadline = monotonicSeconds() + timeout
        while txOutstanding > 0 && monotonicSeconds() < deadline {
            if let u = tx[pair].popUsed() {
                if let gpa = txBuffers.removeValue(forKey: u.head) { freeTx.append((gpa, 2048)) }
                txOutstanding -= 1
            } else {
                usleep(200)
            }
        }
        return txOutstanding == 0
    }

    /// The next frame received on rx queue `pair`, reassembled from its buffers; nil if none within `timeout`.
    public func receive(pair: Int = 0, timeout: Double = 10) -> Received? {
        guard let first = rx[pair].waitUsed(timeout: timeout), let (gpa, _) = rxBuffers[pair].removeValue(forKey: first.head) else { return nil }
        var bytes = ram.read(gpa, Int(first.length))
        guard bytes.count >= headerSize else { return Received(header: Header(), frame: bytes, buffers: 1, bufferGPAs: [gpa]) }
        let h = Header(Array(bytes.prefix(headerSize)))
        var n = 1
        var gpas = [gpa]
        if features & NetTestDriver.fMrgRxbuf != 0 {
            while n < Int(h.numBuffers) {
                guard let u = rx[pair].waitUsed(timeout: timeout), let (g, _) = rxBuffers[pair].removeValue(forKey: u.head) else { return nil }
                bytes += ram.read(g, Int(u.length))
                gpas.append(g)
                n += 1
            }
        }
        return Received(header: h, frame: Array(bytes.dropFirst(headerSize)), buffers: n, bufferGPAs: gpas)
    }

    /// VHOST_USER_SEND_RARP with `mac` (what QEMU sends after a migration); the backend's ack value.
    public func sendRARP(_ mac: [UInt8]) throws -> UInt64? {
        try frontend.send(VhostUserFrontend.Request.sendRARP.rawValue, payload: mac + [0, 0], flags: 1 | VhostUserFrontend.needReply)
        let r = try frontend.receive()
        return r.payload.count == 8 ? r.payload.u64(0) : nil
    }
}

/// Ethernet frames for tests (IEEE 802.3 layout: destination, source, EtherType, payload).
public enum TestFrame {
    public static func ethernet(dst: [UInt8], src: [UInt8], type: UInt16, payload: [UInt8]) -> [UInt8] {
        dst + src + [UInt8(type >> 8), UInt8(type & 0xff)] + payload
    }

    /// An IPv4/UDP frame whose UDP checksum field holds only the pseudo-header sum, as a driver with
    /// VIRTIO_NET_F_CSUM leaves it (NEEDS_CSUM, csum_start 34, csum_offset 6).
    public static func udpPartial(dst: [UInt8], src: [UInt8], payload: [UInt8]) -> [UInt8] {
        let srcIP: [UInt8] = [169, 254, 0, 1], dstIP: [UInt8] = [169, 254, 0, 2]
        let udpLen = 8 + payload.count
        var ip: [UInt8] = [0x45, 0, UInt8((20 + udpLen) >> 8), UInt8((20 + udpLen) & 0xff), 0, 1, 0x40, 0, 64, 17, 0, 0]
        ip += srcIP + dstIP
        let ipSum = fold(sum16(ip))
        ip[10] = UInt8(ipSum >> 8); ip[11] = UInt8(ipSum & 0xff)
        let pseudo = sum16(srcIP + dstIP + [0, 17, UInt8(udpLen >> 8), UInt8(udpLen & 0xff)])
        var p = pseudo
        while p >> 16 != 0 { p = (p & 0xffff) + (p >> 16) }
        let udp: [UInt8] = [0x30, 0x39, 0x30, 0x3a, UInt8(udpLen >> 8), UInt8(udpLen & 0xff), UInt8(p >> 8), UInt8(p & 0xff)]
        return ethernet(dst: dst, src: src, type: 0x0800, payload: ip + udp + payload)
    }

    /// An IPv4/TCP frame (20-byte TCP header, flags PSH|ACK|FIN as given) whose checksum field holds only the
    /// pseudo-header sum, as a driver doing TSO leaves it (csum_start 34, csum_offset 16). The IP total length
    /// is the whole frame's, as Linux sets it for a GSO packet.
    public static func tcpPartial(dst: [UInt8], src: [UInt8], seq: UInt32, flags: UInt8, payload: [UInt8]) -> [UInt8] {
        let srcIP: [UInt8] = [169, 254, 0, 1], dstIP: [UInt8] = [169, 254, 0, 2]
        let tcpLen = 20 + payload.count
        let total = min(20 + tcpLen, 65535)
        var ip: [UInt8] = [0x45, 0, UInt8(total >> 8), UInt8(total & 0xff), 0x12, 0x34, 0x40, 0, 64, 6, 0, 0]
        ip += srcIP + dstIP
        let ipSum = fold(sum16(ip))
        ip[10] = UInt8(ipSum >> 8); ip[11] = UInt8(ipSum & 0xff)
        var p = sum16(srcIP + dstIP + [0, 6, UInt8((tcpLen >> 8) & 0xff), UInt8(tcpLen & 0xff)])
        while p >> 16 != 0 { p = (p & 0xffff) + (p >> 16) }
        var tcp: [UInt8] = [0x30, 0x39, 0x00, 0x50]
        tcp += [UInt8(seq >> 24), UInt8((seq >> 16) & 0xff), UInt8((seq >> 8) & 0xff), UInt8(seq & 0xff)]
        tcp += [0, 0, 0, 1, 0x50, flags, 0xff, 0xff, UInt8(p >> 8), UInt8(p & 0xff), 0, 0]
        return ethernet(dst: dst, src: src, type: 0x0800, payload: ip + tcp + payload)
    }

    /// Whether an IPv4/TCP frame's IP header checksum and TCP checksum (RFC 793 pseudo-header) verify.
    public static func tcpChecksumsValid(_ f: [UInt8]) -> Bool {
        let ihl = Int(f[14] & 0xf) * 4
        let ip = Array(f[14..<(14 + ihl)])
        let total = Int(f[16]) << 8 | Int(f[17])
        guard fold(sum16(ip)) == 0, total == f.count - 14 else { return false }
        let tcp = Array(f[(14 + ihl)...])
        let pseudo = Array(ip[12..<20]) + [0, 6, UInt8(tcp.count >> 8), UInt8(tcp.count & 0xff)]
        return fold(sum16(pseudo) + sum16(tcp)) == 0
    }

    /// Whether the UDP checksum of an IPv4/UDP frame (as built above) verifies (RFC 768 over the pseudo-header).
    public static func udpChecksumValid(_ f: [UInt8]) -> Bool {
        let ip = Array(f[14..<34]), udp = Array(f[34...])
        let pseudo = Array(ip[12..<20]) + [0, 17, UInt8(udp.count >> 8), UInt8(udp.count & 0xff)]
        return fold(sum16(pseudo) + sum16(udp)) == 0
    }

    public static func sum16(_ b: [UInt8]) -> UInt32 {
        var s: UInt32 = 0
        var i = 0
        while i + 1 < b.count { s += UInt32(b[i]) << 8 | UInt32(b[i + 1]); i += 2 }
        if i < b.count { s += UInt32(b[i]) << 8 }
        return s
    }

    /// One's-complement of the folded sum.
    public static func fold(_ s: UInt32) -> UInt16 {
        var x = s
        while x >> 16 != 0 { x = (x & 0xffff) + (x >> 16) }
        return ~UInt16(x)
    }
}
