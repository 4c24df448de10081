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
    /// `extra`: bits that describe config space the device fills but that a vhost-user frontend offers itself
    /// (net: MAC, MTU).
    public static func offeredFeatures(_ device: VirtioDevice, refused: UInt64, extra: UInt64 = 0) -> UInt64 {
        (device.offeredFeatures & ~(refused | VirtioFeature.logAll)) | extra | VirtioFeature.version1
            | VirtioFeature.accessPlatform
    }

    /// Where the in-flight record of each VDUSE device is kept between vdevd processes (a tmpfs: it only has to
    /// outlive the process, not the machine).
    public static var stateDirectory = "/run/vdevd"

    /// Creates /dev/vduse/NAME for `device` (VDUSE_CREATE_DEV and VDUSE_VQ_SETUP per queue), offering its features
    /// less `refusedFeatures` and the first `configSize` bytes of its config space. A device of that name that a
    /// previous vdevd left (still attached, its driver waiting) is taken over: the queues resume where the driver
    /// is, and the requests that vdevd had in flight are resubmitted.
    public convenience init(id: String, name: String, device: VirtioDevice, refusedFeatures: UInt64,
                            extraFeatures: UInt64 = 0, configSize: Int, pollers: PollerGroup, preferredPoller: Int?,
                            logger: Logger) throws {
        let control = try VduseControl()
        let created = try control.createOrReopen(name: name, deviceID: device.deviceID.rawValue,
                                                 features: Self.offeredFeatures(device, refused: refusedFeatures,
                                                                                extra: extraFeatures),
                                                 queueSizes: Array(repeating: device.maxQueueSize, count: device.maxQueues),
                                                 vqAlign: Self.queueAlign,
                                                 config: device.readConfig(offset: 0, count: configSize))
        let file: VduseDeviceFile, existing: Bool
        switch created {
        case .new(let f): (file, existing) = (f, false)
        case .existing(let f): (file, existing) = (f, true)
        }
        let statePath = "\(Self.stateDirectory)/vduse-\(name).inflight"
        var record: InflightMemory?
        var recordError: Error?
        do {
            record = try Self.inflightRecord(statePath, fresh: !existing, queues: device.maxQueues,
                                             queueSize: Int(device.maxQueueSize))
        } catch {
            recordError = error
        }
        try self.init(id: id, name: name, device: device, kernel: file, inflight: record, takingOver: existing,
                      pollers: pollers, preferredPoller: preferredPoller, logger: logger)
        if let recordError {
            self.logger.warning("no in-flight record at \(statePath) (\(recordError)): a restarted vdevd could not resubmit requests")
        }
        if existing { self.logger.notice("VDUSE device \(name) exists and no process serves it: taking it over") }
        destroy = { [weak self] in
            // The kernel refuses to destroy a device whose file is open: close it first (queues have stopped).
            file.file.close()
            if self?.destroyDevice(control: control) == true { unlink(statePath) }
        }
    }

    /// The file recording requests in flight: made empty for a new device, taken as it is for one taken over.
    public static func inflightRecord(_ path: String, fresh: Bool, queues: Int, queueSize: Int) throws -> InflightMemory {
        mkdir(stateDirectory, 0o700)
        let size = UInt64(queues * InflightMemory.regionSize(queueSize: queueSize))
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | (fresh ? O_TRUNC : 0), 0o600)
        guard fd >= 0 else { throw SystemError("open(\(path))", errno: errno) }
        defer { closeFD(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SystemError("fstat(\(path))", errno: errno) }
        if UInt64(st.st_size) != size {
            // A record for another layout says nothing about this device: start it empty.
            guard ftruncate(fd, 0) == 0, ftruncate(fd, off_t(size)) == 0 else { throw SystemError("ftruncate(\(path))", errno: errno) }
        }
        return try InflightMemory(fd: fd, mmapSize: size, offset: 0, numQueues: queues, queueSize: queueSize, ownFile: true)
    }

    /// Set when the device was taken over: the request loop first resumes a driver already running on it.
    private var resuming = false

    /// Serves a device the kernel side of which already exists (tests give a scripted one). `inflight` records
    /// requests in flight across processes; `takingOver`: a previous vdevd served it, and a driver may be running.
    public init(id: String, name: String, device: VirtioDevice, kernel: VduseDeviceKernel, inflight: InflightMemory? = nil,
                takingOver: Bool = false, pollers: PollerGroup, preferredPoller: Int?, logger: Logger) throws {
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
        vduse.inflight = inflight
        resuming = takingOver
        session.onPlacement = { [unowned self] q, p in stateLock.withLock { queuePollers[q] = p } }
        vduse.onStatus = { [unowned self] old, new in
            stateLock.withLock {
                statusSeen = new
                if new & VirtioStatus.driverOK != 0 && old & VirtioStatus.driverOK == 0 { driverStarts += 1 }
            }
        }
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
        queueStats.logTotals(logger)
    }

    private func destroyDevice(control: VduseControl) -> Bool {
        let rc = control.destroy(name: name)
        if rc == 0 {
            logger.info("VDUSE device \(name) destroyed")
            return true
        } else if rc == -EBUSY {
            logger.warning("VDUSE device \(name) is still attached, so it stays in the kernel: a vdevd started with the same export takes it over (the driver's I/O waits until then), or detach it with 'vdpa dev del \(name)'")
        } else {
            logger.error("VDUSE_DESTROY_DEV \(name): \(SystemError.describe(-rc))")
        }
        return false
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
        if resuming { vduse.resume() }
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
                try vduse.serveOne()
            } catch {
                logger.error("VDUSE device file: \(error); no more requests served")
                return
            }
        }
    }
}
