#if canImport(Glibc)
import Glibc
#endif
import Virtio

/// A virtio-net device (virtio 1.3, 5.1) whose frames go through a switch port. Queue 2k receives and 2k+1
/// transmits for pair k. Over vhost-user the frontend keeps the control queue and config space; the backend
/// learns the active pairs from the rings it is told to start (SET_VRING_ENABLE).
public final class NetDevice: VirtioDevice, MigrationAnnouncer, HostMTUReceiver {
    public let options: NetOptions
    public let port: SwitchPort
    public let sw: NetSwitch
    public var log: (String) -> Void = { _ in }
    /// The MTU the guest was told: mtu= unless the frontend set a smaller one.
    public let linkMTU: LinkMTU

    private let lock = Lock()
    private var acked: UInt64 = 0
    /// The RARP frame announced after a migration: its own buffer, reused once no receiver holds it.
    private let announcement = NetFrameTable(count: 1)
    private let announcementBytes = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 8)

    /// Offered feature bits, one constant (asserted by tests). TSO and UFO both ways: a GSO frame reaches a driver
    /// that took GUEST_TSO4/6 or GUEST_UFO whole and is segmented (TCP) or fragmented (UDP) in software for one
    /// that did not. ECN is not offered.
    public static let features: UInt64 = VirtioFeature.version1 | VirtioFeature.ringEventIdx
        | VirtioFeature.ringIndirectDesc | NetFeature.mrgRxbuf | NetFeature.csum | NetFeature.guestCsum
        | NetFeature.mq | NetFeature.hostTSO4 | NetFeature.hostTSO6 | NetFeature.guestTSO4 | NetFeature.guestTSO6
        | NetFeature.mtu | NetFeature.hostUFO | NetFeature.guestUFO

    public var deviceID: VirtioDeviceID { .net }
    public var offeredFeatures: UInt64 { NetDevice.features }
    public var maxQueues: Int { 2 * options.queuePairs }
    public var maxQueueSize: UInt32 { options.queueSize }
    /// Live migration: the device writes guest memory only into rx buffers (NetRxQueue logs them) and used rings
    /// (the binding logs those); tx buffers are only read.
    public var logsDirtyPages: Bool { true }

    public init(options: NetOptions, switch sw: NetSwitch) {
        self.options = options
        self.sw = sw
        linkMTU = LinkMTU(ceiling: options.mtu)
        port = sw.addPort(name: options.id, vlan: options.vlan, mac: options.mac)
    }

    deinit { announcementBytes.deallocate() }

    /// Leaves the switch (the export stopped).
    public func detachFromSwitch() { sw.removePort(port) }

    public var ackedFeatures: UInt64 { lock.withLock { acked } }

    /// struct virtio_net_config (5.1.4): mac, status, max_virtqueue_pairs, mtu. Used where vdevd owns the
    /// config space (VDUSE); QEMU's vhost-user-net keeps its own.
    public func readConfig(offset: Int, count: Int) -> [UInt8] {
        var c = [UInt8](repeating: 0, count: 12)
        if let mac = options.mac { for (i, b) in mac.octets.enumerated() { c[i] = b } }
        c[6] = 1   // VIRTIO_NET_S_LINK_UP
        c[8] = UInt8(options.queuePairs & 0xff)
        c[9] = UInt8(options.queuePairs >> 8)
        c[10] = UInt8(options.mtu & 0xff)
        c[11] = UInt8(options.mtu >> 8)
        return (0..<count).map { offset + $0 < c.count && offset + $0 >= 0 ? c[offset + $0] : 0 }
    }

    public func writeConfig(offset: Int, bytes: [UInt8]) -> Bool { false }

    public func featuresAcked(_ features: UInt64) { lock.withLock { acked = features } }

    public func makeQueueHandler(context: QueueContext) throws -> QueueHandler {
        let f = ackedFeatures
        if context.binding.vq.index % 2 == 0 {
            return try NetRxQueue(context: context, port: port, sw: sw, features: f)
        }
        return NetTxQueue(binding: context.binding, port: port, sw: sw, features: f, mtu: linkMTU)
    }

    public func reset() { lock.withLock { acked = 0 } }

    /// VHOST_USER_NET_SET_MTU: the MTU QEMU gave the guest (host_mtu), at most the export's mtu=. Frames longer
    /// than it are dropped from then on (counted as oversized).
    public func setHostMTU(_ mtu: UInt64) -> String? {
        // A refusal is logged once, by the transport that reports it to the frontend.
        guard let refused = linkMTU.set(mtu) else {
            log("guest MTU \(mtu)")
            return nil
        }
        return refused
    }

    /// VHOST_USER_SEND_RARP (after a migration): a RARP from the guest's MAC, flooded, so the switch and the
    /// peers learn where it is now. Control thread.
    public func announce(mac bytes: [UInt8]) -> Bool {
        guard bytes.count >= 6 else { return false }
        var v: UInt64 = 0
        for b in bytes.prefix(6) { v = v << 8 | UInt64(b) }
        let mac = MACAddress(value: v)
        if let fixed = options.mac, fixed != mac { return false }
        let f = announcement.frames
        guard !f.frameInUse, !mac.isMulticast else { return false }
        let p = announcementBytes
        RARPFrame.write(mac: mac, to: p)
        f.pointee.iov[0] = iovec(iov_base: p, iov_len: RARPFrame.length)
        f.pointee.iovCount = 1
        f.pointee.length = RARPFrame.length
        f.pointee.header = NetHeader()
        f.pointee.dst = .broadcast
        f.pointee.src = mac
        f.pointee.flowHash = 0
        port.counters.add(.txFrames)
        port.counters.add(.txBytes, UInt64(RARPFrame.length))
        sw.inject(f, from: port)
        log("announced \(mac) with a RARP")
        return true
    }
}
