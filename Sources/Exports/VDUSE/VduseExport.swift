#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Logging
import Virtio

/// A device exported through VDUSE: the kernel shows it as a vDPA device (`vdpa dev add name NAME mgmtdev vduse`
/// binds it to virtio_vdpa, so the host gets /dev/vdX, or to vhost_vdpa for a VM). The kernel's requests are
/// served on the export's own control thread; queues run on pollers.
public final class VduseExport: Export {
    public let id: String
    public let name: String
    public let device: VirtioDevice
    public let queueStats: [QueueStats]
    public internal(set) var logger: Logger
    let vduse: VduseSession
    private let kernel: VduseDeviceKernel
    /// Destroys the kernel device once the device file is closed (nil when the device was not made here).
    private var destroy: (() -> Void)?
    private let stopEvent: EventFD
    private var thread: pthread_t?
    private let stateLock = Lock()
    private var queuePollers: [Int?]
    private var running = false
    public var onStop: [() -> Void] = []

    /// VDUSE_VQ_SETUP's vq_align: at most a page (the kernel refuses more).
    public static let queueAlign: UInt32 = 4096

    /// The features offered through VDUSE: the device's, less what VDUSE cannot carry (`refused`: for blk a
    /// writable config space; dirty logging always), plus VIRTIO_F_ACCESS_PLATFORM, which VDUSE requires (the
    /// driver's buffers are IOVAs) and VERSION_1.
    public static func offeredFeatures(_ device: VirtioDevice, refused: UInt64) -> UInt64 {
        (device.offeredFeatures & ~(refused | VirtioFeature.logAll)) | VirtioFeature.version1 | VirtioFeature.accessPlatform
    }

    /// Creates /dev/vduse/NAME for `device` (VDUSE_CREATE_DEV and VDUSE_VQ_SETUP per queue), offering its features
    /// less `refusedFeatures` and the first `configSize` bytes of its config space.
    public convenience init(id: String, name: String, device: VirtioDevice, refusedFeatures: UInt64, configSize: Int,
                            pollers: PollerGroup, preferredPoller: Int?, logger: Logger) throws {
        let control = try VduseControl()
        let file = try control.create(name: name, deviceID: device.deviceID.rawValue,
                                      features: Self.offeredFeatures(device, refused: refusedFeatures),
                                      queueSizes: Array(repeating: device.maxQueueSize, count: device.maxQueues),
                                      vqAlign: Self.queueAlign, config: device.readConfig(offset: 0, count: configSize))
        try self.init(id: id, name: name, device: device, kernel: file, pollers: pollers, preferredPoller: preferredPoller,
                      logger: logger)
        destroy = { [weak self] in
            // The kernel refuses to destroy a device whose file is open: close it first (queues have stopped).
            file.file.close()
            self?.destroyDevice(control: control)
        }
    }

    /// Serves a device the kernel side of which already exists (tests give a scripted one).
    public init(id: String, name: String, device: VirtioDevice, kernel: VduseDeviceKernel, pollers: PollerGroup,
                preferredPoller: Int?, logger: Logger) throws {
        self.id = id
        self.name = name
        self.device = device
        self.kernel = kernel
        var l = logger
        l[metadataKey: "export"] = "\(id)"
        self.logger = l
        queueStats = (0..<device.maxQueues).map { _ in QueueStats() }
        queuePollers = Array(repeating: nil, count: device.maxQueues)
        stopEvent = try EventFD()
        let session = DeviceSession(device: device, pollers: pollers, preferredPoller: preferredPoller,
                                    queueStats: queueStats, logger: l)
        vduse = VduseSession(session: session, kernel: kernel, logger: l)
        session.onPlacement = { [unowned self] q, p in stateLock.withLock { queuePollers[q] = p } }
    }

    public func start() {
        stateLock.withLock { running = true }
        thread = spawnThread { [self] in requestLoop() }
        logger.info("VDUSE device /dev/vduse/\(name) (\(device.deviceID), \(device.maxQueues) queues): attach it with 'vdpa dev add name \(name) mgmtdev vduse'")
    }

    /// Stops serving: queues drain and stop, mappings go, and the kernel device is destroyed (the kernel refuses
    /// while it is still attached: `vdpa dev del NAME` comes first).
    public func stop() {
        stopEvent.signal()
        if let t = thread { pthread_join(t, nil) }
        thread = nil
        vduse.reset()
        destroy?()
        destroy = nil
        for f in onStop { f() }
        for (i, s) in queueStats.enumerated() {
            let fields = QueueStats.Counter.allCases.map { "\($0)=\(s.get($0))" }.joined(separator: " ")
            logger.info("queue \(i) totals: \(fields)")
        }
    }

    private func destroyDevice(control: VduseControl) {
        let rc = control.destroy(name: name)
        if rc == 0 {
            logger.info("VDUSE device \(name) destroyed")
        } else if rc == -EBUSY {
            logger.error("VDUSE device \(name) is still in use (attached: run 'vdpa dev del \(name)'); it stays in the kernel until then")
        } else {
            logger.error("VDUSE_DESTROY_DEV \(name): \(SystemError.describe(-rc))")
        }
    }

    public var stats: [String: Any] {
        stateLock.withLock {
            ["id": id, "vduse": name, "connected": running && statusSeen & VirtioStatus.driverOK != 0,
             "queues": queueStats.map { $0.snapshot }]
        }
    }

    public var snapshot: ExportSnapshot {
        let (placement, status) = stateLock.withLock { (queuePollers, statusSeen) }
        return ExportSnapshot(id: id, socket: "/dev/vduse/\(name)", connected: status & VirtioStatus.driverOK != 0,
                              connections: driverStarts, queues: queueStats.enumerated().map { i, s in
                                  ExportSnapshot.Queue(index: i, poller: placement[i], counters: s.snapshot)
                              })
    }

    /// The last status the driver set and how many times it reached DRIVER_OK (for snapshots; any thread).
    private var statusSeen: UInt8 = 0
    private var driverStarts = 0

    private func requestLoop() {
        vdv_set_thread_name("vdevd-\(id)")
        while true {
            var fds = [pollfd(fd: kernel.requestFD, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: stopEvent.fd, events: Int16(POLLIN), revents: 0)]
            let n = poll(&fds, 2, -1)
            if n < 0 { if errno == EINTR { continue }; logger.error("poll: \(SystemError.describe(errno))"); return }
            if fds[1].revents != 0 { return }
            if fds[0].revents & Int16(POLLIN) == 0 {
                logger.error("VDUSE device file: poll events 0x\(String(fds[0].revents, radix: 16)); no more requests served")
                return
            }
            do {
                let before = vduse.status
                try vduse.serveOne()
                let now = vduse.status
                stateLock.withLock {
                    statusSeen = now
                    if now & VirtioStatus.driverOK != 0 && before & VirtioStatus.driverOK == 0 { driverStarts += 1 }
                }
            } catch {
                logger.error("VDUSE device file: \(error); no more requests served")
                return
            }
        }
    }
}
