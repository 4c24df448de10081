/// virtio-net feature bits (virtio 1.3, 5.1.3).
public enum NetFeature {
    public static let csum: UInt64 = 1 << 0              // VIRTIO_NET_F_CSUM: driver may send partial checksums
    public static let guestCsum: UInt64 = 1 << 1         // VIRTIO_NET_F_GUEST_CSUM: driver takes partial checksums
    public static let mtu: UInt64 = 1 << 3               // VIRTIO_NET_F_MTU
    public static let mac: UInt64 = 1 << 5               // VIRTIO_NET_F_MAC
    public static let guestTSO4: UInt64 = 1 << 7         // VIRTIO_NET_F_GUEST_TSO4
    public static let guestTSO6: UInt64 = 1 << 8         // VIRTIO_NET_F_GUEST_TSO6
    public static let guestECN: UInt64 = 1 << 9          // VIRTIO_NET_F_GUEST_ECN
    public static let guestUFO: UInt64 = 1 << 10         // VIRTIO_NET_F_GUEST_UFO
    public static let hostTSO4: UInt64 = 1 << 11         // VIRTIO_NET_F_HOST_TSO4
    public static let hostTSO6: UInt64 = 1 << 12         // VIRTIO_NET_F_HOST_TSO6
    public static let hostECN: UInt64 = 1 << 13          // VIRTIO_NET_F_HOST_ECN
    public static let hostUFO: UInt64 = 1 << 14          // VIRTIO_NET_F_HOST_UFO
    public static let mrgRxbuf: UInt64 = 1 << 15         // VIRTIO_NET_F_MRG_RXBUF
    public static let status: UInt64 = 1 << 16           // VIRTIO_NET_F_STATUS
    public static let ctrlVq: UInt64 = 1 << 17           // VIRTIO_NET_F_CTRL_VQ
    public static let guestAnnounce: UInt64 = 1 << 21    // VIRTIO_NET_F_GUEST_ANNOUNCE
    public static let mq: UInt64 = 1 << 22               // VIRTIO_NET_F_MQ
}
