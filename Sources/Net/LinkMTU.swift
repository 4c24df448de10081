import CVdevd

/// The MTU a port's guest was told (VIRTIO_NET_F_MTU): the export's `mtu=` until the frontend sets a smaller
/// one (vhost-user's NET_SET_MTU, QEMU's host_mtu). Set on the control thread, read by the port's tx queues once
/// per pass, so a change reaches queues already running.
public final class LinkMTU {
    /// The export's mtu=: the most the frontend may set.
    public let ceiling: Int
    private let cell = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
    /// virtio 1.3, 5.1.4.1: the device MUST NOT offer an MTU below 68 (IPv4's minimum).
    public static let minimum = 68

    init(ceiling: Int) {
        self.ceiling = ceiling
        cell.initialize(to: UInt32(ceiling))
    }

    deinit { cell.deallocate() }

    public var value: Int { Int(vdv_load_acquire_u32(cell)) }

    /// Takes a new MTU, or says why not.
    func set(_ mtu: UInt64) -> String? {
        guard mtu >= UInt64(LinkMTU.minimum), mtu <= UInt64(ceiling) else {
            return "MTU \(mtu) is outside \(LinkMTU.minimum)...\(ceiling) (the export's mtu= is the ceiling)"
        }
        vdv_store_release_u32(cell, UInt32(mtu))
        return nil
    }
}
