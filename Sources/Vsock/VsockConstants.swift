/// virtio-vsock wire constants (virtio 1.3, 5.10).
public enum VsockFeature {
    public static let stream: UInt64 = 1 << 0      // VIRTIO_VSOCK_F_STREAM
    public static let seqpacket: UInt64 = 1 << 1   // VIRTIO_VSOCK_F_SEQPACKET
}

public enum VsockOp: UInt16 {
    case invalid = 0, request, response, rst, shutdown, rw, creditUpdate, creditRequest
}

public enum VsockType: UInt16 {
    case stream = 1
    case seqpacket = 2
}

public enum VsockLayout {
    public static let headerSize = 44
    public static let hostCID: UInt64 = 2
    public static let shutdownRcv: UInt32 = 1       // sender will receive no more
    public static let shutdownSend: UInt32 = 2      // sender will send no more
    public static let seqEOM: UInt32 = 1            // end of a SEQPACKET message
    public static let seqEOR: UInt32 = 2
    public static let eventTransportReset: UInt32 = 0
    public static let rxQueue = 0, txQueue = 1, eventQueue = 2
}

/// struct virtio_vsock_hdr, little-endian, 44 bytes. Read once from guest memory into this value.
public struct VsockHeader: Equatable {
    public var srcCID: UInt64 = 0
    public var dstCID: UInt64 = 0
    public var srcPort: UInt32 = 0
    public var dstPort: UInt32 = 0
    public var len: UInt32 = 0
    public var type: UInt16 = VsockType.stream.rawValue
    public var op: UInt16 = 0
    public var flags: UInt32 = 0
    public var bufAlloc: UInt32 = 0
    public var fwdCnt: UInt32 = 0

    public init() {}

    public init(from p: UnsafeRawPointer) {
        srcCID = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
        dstCID = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        srcPort = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 16, as: UInt32.self))
        dstPort = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 20, as: UInt32.self))
        len = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 24, as: UInt32.self))
        type = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 28, as: UInt16.self))
        op = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 30, as: UInt16.self))
        flags = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 32, as: UInt32.self))
        bufAlloc = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 36, as: UInt32.self))
        fwdCnt = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 40, as: UInt32.self))
    }

    public func write(to p: UnsafeMutableRawPointer) {
        p.storeBytes(of: srcCID.littleEndian, toByteOffset: 0, as: UInt64.self)
        p.storeBytes(of: dstCID.littleEndian, toByteOffset: 8, as: UInt64.self)
        p.storeBytes(of: srcPort.littleEndian, toByteOffset: 16, as: UInt32.self)
        p.storeBytes(of: dstPort.littleEndian, toByteOffset: 20, as: UInt32.self)
        p.storeBytes(of: len.littleEndian, toByteOffset: 24, as: UInt32.self)
        p.storeBytes(of: type.littleEndian, toByteOffset: 28, as: UInt16.self)
        p.storeBytes(of: op.littleEndian, toByteOffset: 30, as: UInt16.self)
        p.storeBytes(of: flags.littleEndian, toByteOffset: 32, as: UInt32.self)
        p.storeBytes(of: bufAlloc.littleEndian, toByteOffset: 36, as: UInt32.self)
        p.storeBytes(of: fwdCnt.littleEndian, toByteOffset: 40, as: UInt32.self)
    }

    public var bytes: [UInt8] {
        var b = [UInt8](repeating: 0, count: VsockLayout.headerSize)
        b.withUnsafeMutableBytes { write(to: $0.baseAddress!) }
        return b
    }
}
