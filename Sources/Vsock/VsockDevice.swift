#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Virtio

/// A virtio-vsock device (virtio 1.3, 5.10) whose guest connections are bridged to host Unix sockets
/// (the hybrid-vsock convention of Firecracker and vhost-device-vsock) or relayed to sibling guests.
public final class VsockDevice: VirtioDevice {
    public let options: VsockOptions
    public let listenFD: Int32
    public let registry: VsockRegistry
    public var log: (String) -> Void = { _ in }
    public var trace: (String) -> Void = { _ in }

    private let lock = Lock()
    private var _engine: VsockEngine?
    private var ranBefore = false
    private(set) var ackedFeatures: UInt64 = 0

    public static let features: UInt64 = VirtioFeature.version1 | VirtioFeature.ringEventIdx | VirtioFeature.ringIndirectDesc
        | VsockFeature.stream | VsockFeature.seqpacket

    public var deviceID: VirtioDeviceID { .vsock }
    public var offeredFeatures: UInt64 { VsockDevice.features }
    public var maxQueues: Int { 3 }
    public var maxQueueSize: UInt32 { options.queueSize }
    public var queuesSharePoller: Bool { true }
    /// Every write to guest memory (rx packets, their headers, events) is logged as it is made.
    public var logsDirtyPages: Bool { true }

    /// `listenFD` is the listening socket at options.udsPath (created by the export).
    public init(options: VsockOptions, listenFD: Int32, registry: VsockRegistry = .shared) {
        self.options = options
        self.listenFD = listenFD
        self.registry = registry
        _ = fcntl(listenFD, F_SETFL, fcntl(listenFD, F_GETFL) | O_NONBLOCK)
    }

    deinit { closeFD(listenFD) }

    var engine: VsockEngine? { lock.withLock { _engine } }

    /// struct virtio_vsock_config: le64 guest_cid.
    public func readConfig(offset: Int, count: Int) -> [UInt8] {
        var c = [UInt8](repeating: 0, count: 8)
        for i in 0..<8 { c[i] = UInt8(truncatingIfNeeded: options.guestCID >> (8 * UInt64(i))) }
        return (0..<count).map { offset + $0 < 8 ? c[offset + $0] : 0 }
    }

    public func writeConfig(offset: Int, bytes: [UInt8]) -> Bool { false }

    public func featuresAcked(_ features: UInt64) { ackedFeatures = features }

    public func makeQueueHandler(context: QueueContext) throws -> QueueHandler {
        let e: VsockEngine = lock.withLock {
            if let e = _engine { return e }
            // A device that ran before and starts again tells the guest its old connections are gone.
            let e = VsockEngine(device: self, poller: context.poller, resetEventDue: ranBefore)
            ranBefore = true
            _engine = e
            return e
        }
        return VsockQueue(engine: e, index: context.binding.vq.index, binding: context.binding)
    }

    func queueDetached(_ index: Int, engine e: VsockEngine) {
        e.detach(index)
        if e.attached.isEmpty { lock.withLock { if _engine === e { _engine = nil } } }
    }

    public func reset() { ackedFeatures = 0 }
}
