/// A network device that takes the MTU its guest was given from the frontend (vhost-user's NET_SET_MTU, sent
/// when VIRTIO_NET_F_MTU is negotiated: QEMU's host_mtu). Transports offer the matching protocol feature only
/// for such devices.
public protocol HostMTUReceiver: AnyObject {
    /// Takes the MTU; nil if accepted, else why it was refused.
    func setHostMTU(_ mtu: UInt64) -> String?
}
