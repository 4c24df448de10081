/// What an operator can set on a blk export.
public struct BlkOptions: Equatable {
    public var id: String
    public var path: String
    public var readonly = false
    public var direct = false
    public var numQueues = 1
    public var queueSize: UInt32 = 256
    public var logicalBlockSize: UInt32 = 512
    public var writeCache = true
    public var engine: Engine = .ioUring
    /// Serve requests inline when the image is on tmpfs/ramfs (nothing there waits for a device).
    public var inlineIO = true
    /// Register guest memory with io_uring (O_DIRECT on io_uring, memory that is already allocated).
    public var fixedBuffers = true

    /// How requests reach the file: io_uring, or Linux AIO for kernels with io_uring disabled.
    public enum Engine: String, CaseIterable {
        case ioUring = "io_uring"
        case aio
    }

    public init(id: String, path: String) {
        self.id = id
        self.path = path
    }

    /// Per-request limits the device advertises and enforces.
    public static let segMax: UInt32 = 126
    public static let sizeMax: UInt32 = 1 << 20
    public static let maxDiscardSectors: UInt32 = 1 << 21
    public static let maxDiscardSegments: UInt32 = 16
}
