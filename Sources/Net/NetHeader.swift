/// struct virtio_net_hdr (virtio 1.3, 5.1.6): 10 bytes, 12 with num_buffers (VERSION_1 or MRG_RXBUF).
public struct NetHeader: Equatable {
    public static let needsCsum: UInt8 = 1       // VIRTIO_NET_HDR_F_NEEDS_CSUM
    public static let dataValid: UInt8 = 2       // VIRTIO_NET_HDR_F_DATA_VALID
    public static let gsoNone: UInt8 = 0         // VIRTIO_NET_HDR_GSO_NONE
    public static let gsoTCPv4: UInt8 = 1        // VIRTIO_NET_HDR_GSO_TCPV4
    public static let gsoUDP: UInt8 = 3          // VIRTIO_NET_HDR_GSO_UDP
    public static let gsoTCPv6: UInt8 = 4        // VIRTIO_NET_HDR_GSO_TCPV6
    public static let gsoECN: UInt8 = 0x80       // VIRTIO_NET_HDR_GSO_ECN
    public static let size = 12
    public static let legacySize = 10

    public var flags: UInt8 = 0
    public var gsoType: UInt8 = 0
    public var hdrLen: UInt16 = 0
    public var gsoSize: UInt16 = 0
    public var csumStart: UInt16 = 0
    public var csumOffset: UInt16 = 0
    public var numBuffers: UInt16 = 0

    public init() {}

    /// Reads the little-endian fields from `p` (at least 10 bytes; num_buffers only when `size` is 12).
    public init(from p: UnsafeRawPointer, size: Int) {
        flags = p.load(fromByteOffset: 0, as: UInt8.self)
        gsoType = p.load(fromByteOffset: 1, as: UInt8.self)
        hdrLen = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
        gsoSize = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt16.self))
        csumStart = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 6, as: UInt16.self))
        csumOffset = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt16.self))
        numBuffers = size >= 12 ? UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 10, as: UInt16.self)) : 0
    }

    public func write(to p: UnsafeMutableRawPointer, size: Int) {
        p.storeBytes(of: flags, toByteOffset: 0, as: UInt8.self)
        p.storeBytes(of: gsoType, toByteOffset: 1, as: UInt8.self)
        p.storeBytes(of: hdrLen.littleEndian, toByteOffset: 2, as: UInt16.self)
        p.storeBytes(of: gsoSize.littleEndian, toByteOffset: 4, as: UInt16.self)
        p.storeBytes(of: csumStart.littleEndian, toByteOffset: 6, as: UInt16.self)
        p.storeBytes(of: csumOffset.littleEndian, toByteOffset: 8, as: UInt16.self)
        if size >= 12 { p.storeBytes(of: numBuffers.littleEndian, toByteOffset: 10, as: UInt16.self) }
    }

    /// The header size a driver with these features uses (5.1.6: num_buffers is there with VERSION_1 or MRG_RXBUF).
    public static func size(features: UInt64) -> Int {
        features & (NetFeature.mrgRxbuf | (1 << 32)) != 0 ? size : legacySize
    }
}
