/// Device-independent feature bits (virtio 1.3, 6: reserved feature bits).
public enum VirtioFeature {
    public static let logAll: UInt64 = 1 << 26             // VHOST_F_LOG_ALL (vhost, not virtio)
    public static let ringIndirectDesc: UInt64 = 1 << 28   // VIRTIO_F_RING_INDIRECT_DESC
    public static let ringEventIdx: UInt64 = 1 << 29       // VIRTIO_F_RING_EVENT_IDX
    public static let version1: UInt64 = 1 << 32           // VIRTIO_F_VERSION_1
    public static let accessPlatform: UInt64 = 1 << 33     // VIRTIO_F_ACCESS_PLATFORM
    public static let ringPacked: UInt64 = 1 << 34         // VIRTIO_F_RING_PACKED
}

/// Device types (virtio 1.3, 5: device types).
public enum VirtioDeviceID: UInt32 {
    case net = 1
    case block = 2
    case vsock = 19
}

/// Device status bits (virtio 1.3, 2.1).
public enum VirtioStatus {
    public static let acknowledge: UInt8 = 1
    public static let driver: UInt8 = 2
    public static let driverOK: UInt8 = 4
    public static let featuresOK: UInt8 = 8
    public static let needsReset: UInt8 = 64
    public static let failed: UInt8 = 128
}
