/// virtio-blk feature bits (virtio 1.3, 5.2.3).
public enum BlkFeature {
    public static let sizeMax: UInt64 = 1 << 1
    public static let segMax: UInt64 = 1 << 2
    public static let ro: UInt64 = 1 << 5
    public static let blkSize: UInt64 = 1 << 6
    public static let flush: UInt64 = 1 << 9
    public static let topology: UInt64 = 1 << 10
    public static let configWCE: UInt64 = 1 << 11
    public static let mq: UInt64 = 1 << 12
    public static let discard: UInt64 = 1 << 13
    public static let writeZeroes: UInt64 = 1 << 14
}

/// Request types (virtio 1.3, 5.2.6). Unknown values stay representable so they can be answered UNSUPP.
public struct BlkRequestType: RawRepresentable, Equatable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let `in` = BlkRequestType(rawValue: 0)
    public static let out = BlkRequestType(rawValue: 1)
    public static let flush = BlkRequestType(rawValue: 4)
    public static let getID = BlkRequestType(rawValue: 8)
    public static let discard = BlkRequestType(rawValue: 11)
    public static let writeZeroes = BlkRequestType(rawValue: 13)
}

/// Status byte values (virtio 1.3, 5.2.6).
public enum BlkStatus: UInt8 {
    case ok = 0
    case ioerr = 1
    case unsupp = 2
}

public enum BlkLayout {
    public static let sectorSize: UInt64 = 512          // virtio-blk sectors are always 512 bytes
    public static let headerSize = 16                   // struct virtio_blk_outhdr
    public static let discardSegmentSize = 16           // struct virtio_blk_discard_write_zeroes
    public static let idBytes = 20                      // VIRTIO_BLK_ID_BYTES
    public static let configSize = 60                   // struct virtio_blk_config up to write_zeroes_may_unmap
    public static let writebackOffset = 32              // config offset of `writeback`
    public static let discardUnmapFlag: UInt32 = 1      // VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
}
