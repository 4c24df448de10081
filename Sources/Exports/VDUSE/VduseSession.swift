import Logging
import Virtio

/// A VDUSE device's side of the driver's life: turns the kernel's requests (SET_STATUS, GET_VQ_STATE,
/// UPDATE_IOTLB) into device-session calls. Runs on the export's control thread; never on a poller.
final class VduseSession {
    let session: DeviceSession
    let kernel: VduseDeviceKernel
    let iotlb: VduseIOTLB
    var logger: Logger
    /// The device status the driver set (DRIVER_OK: queues run). Every change is told to `onStatus` before the
    /// kernel hears the answer, so whoever reads it after the answer sees it.
    private(set) var status: UInt8 = 0 {
        didSet { if status != oldValue { onStatus(oldValue, status) } }
    }
    var onStatus: (_ old: UInt8, _ new: UInt8) -> Void = { _, _ in }
    /// Requests answered FAILED (unknown type, bad queue index, a queue that could not start).
    private(set) var failedRequests = 0
    /// The kick eventfd of each queue while the driver runs (VDUSE_VQ_SETUP_KICKFD).
    private var kicks: [EventFD?]
    /// Where requests in flight are recorded, in a file that outlives this process, so a vdevd started again on
    /// the same device resubmits exactly those (nil: not tracked).
    var inflight: InflightMemory?

    /// Transport bits the driver accepts that the device model does not know.
    static let transportFeatures: UInt64 = VirtioFeature.accessPlatform

    init(session: DeviceSession, kernel: VduseDeviceKernel, logger: Logger) {
        self.session = session
        self.kernel = kernel
        self.logger = logger
        iotlb = VduseIOTLB(kernel: kernel)
        kicks = Array(repeating: nil, count: session.queues.count)
    }

    /// Reads one request and answers it. Throws only when the device file fails (the export then stops serving).
    func serveOne() throws {
        let r = try kernel.readRequest()
        let response = handle(r)
        if !response.ok { failedRequests += 1 }
        try kernel.respond(response)
    }

    func handle(_ r: VduseRequest) -> VduseResponse {
        logger.trace("\(r.kind) id=\(r.id)")
        switch r.kind {
        case .getVQState:
            guard Int(r.queue) < session.queues.count else {
                logger.warning("GET_VQ_STATE for queue \(r.queue): the device has \(session.queues.count)")
                return VduseResponse(id: r.id, ok: false)
            }
            let i = Int(r.queue)
            // A running queue is stopped first: the state asked for is where the device will resume.
            session.stopQueue(i)
            return VduseResponse(id: r.id, ok: true, queue: r.queue, availIndex: session.queues[i].base)
        case .setStatus:
            return VduseResponse(id: r.id, ok: setStatus(r.status))
        case .updateIOTLB:
            guard r.iovaStart <= r.iovaLast else {
                logger.warning("UPDATE_IOTLB with an empty range [0x\(String(r.iovaStart, radix: 16)), 0x\(String(r.iovaLast, radix: 16))]")
                return VduseResponse(id: r.id, ok: false)
            }
            let n = iotlb.invalidate(start: r.iovaStart, last: r.iovaLast)
            // Running queues move to a table without those mappings before the kernel hears back; each poller keeps
            // the old ones until the requests using them complete.
            if n > 0 && session.anyRunning {
                do { try session.installMemory(iotlb.table(), startReady: false) } catch {
                    logger.error("UPDATE_IOTLB: \(error)")
                }
            }
            logger.debug("UPDATE_IOTLB [0x\(String(r.iovaStart, radix: 16)), 0x\(String(r.iovaLast, radix: 16))]: \(n) mapping(s) dropped")
            return VduseResponse(id: r.id, ok: true)
        default:
            logger.warning("unknown VDUSE request type \(r.kind.rawValue): answered FAILED")
            return VduseResponse(id: r.id, ok: false)
        }
    }

    /// virtio 1.3, 3.1.1: the driver sets DRIVER_OK once its queues are set up; 0 resets the device.
    private func setStatus(_ s: UInt8) -> Bool {
        let was = status
        logger.debug("status 0x\(String(s, radix: 16))")
        if s == 0 {
            if was != 0 { reset() }
            return true
        }
        let driverOK = s & VirtioStatus.driverOK != 0
        if driverOK && was & VirtioStatus.driverOK == 0 {
            // DRIVER_OK holds only once the queues run.
            guard start() else {
                status = s & ~VirtioStatus.driverOK
                return false
            }
        } else if !driverOK && was & VirtioStatus.driverOK != 0 {
            stopQueues()
        }
        status = s
        return true
    }

    /// A device a previous vdevd served: no SET_STATUS comes for a driver already running on it, so a ready queue
    /// means DRIVER_OK was set. Queues start where the ring's used index says, and requests the previous vdevd had
    /// in flight (its in-flight record) come first. Returns how many queues run.
    @discardableResult
    func resume() -> Int {
        let ready = session.queues.indices.filter { (try? kernel.queueInfo($0).ready) == true }
        guard !ready.isEmpty else {
            logger.info("taking over /dev/vduse: no driver running on it yet")
            return 0
        }
        logger.notice("taking over a running device: \(ready.count) queue(s) ready")
        guard start(resuming: true) else { return 0 }
        status = VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK | VirtioStatus.driverOK
        return session.queues.filter { $0.running != nil }.count
    }

    /// The used index the driver last saw on a ring (where a taken-over queue resumes without a record).
    private func ringUsedIndex(_ deviceArea: UInt64) -> UInt16? {
        var t = iotlb.table()
        if t.translate(gpa: deviceArea + 2, length: 2) == nil, let m = t.faultingIn(gpa: deviceArea + 2) { t = m }
        guard let p = t.translate(gpa: deviceArea + 2, length: 2) else { return nil }
        return p.load(as: UInt16.self)
    }

    /// DRIVER_OK: the driver's features, each ready queue's addresses (VDUSE_VQ_GET_INFO), a kick eventfd each,
    /// and the queues start on pollers. False (the driver sees the status refused) if any queue cannot start.
    private func start(resuming: Bool = false) -> Bool {
        do {
            let f = try kernel.driverFeatures()
            session.features = f
            session.device.featuresAcked(f & ~Self.transportFeatures)
            try session.installMemory(iotlb.table(), startReady: false)
            session.inflight = inflight
            for i in session.queues.indices {
                let info = try kernel.queueInfo(i)
                guard info.ready else { continue }
                guard info.num > 0, info.num <= session.device.maxQueueSize, info.num & (info.num - 1) == 0 else {
                    throw DeviceSessionError("queue \(i) size \(info.num) (must be a power of two up to \(session.device.maxQueueSize))")
                }
                let kick = try EventFD()
                try kernel.setKick(i, kick)
                kicks[i] = kick
                session.queues[i].num = info.num
                session.queues[i].base = info.availIndex
                if resuming {
                    // Without a record, what the driver has seen completed is where serving goes on.
                    guard let used = ringUsedIndex(info.deviceArea) else {
                        throw DeviceSessionError("queue \(i): used ring at 0x\(String(info.deviceArea, radix: 16)) not mapped")
                    }
                    session.queues[i].base = used
                }
                session.queues[i].addresses = VringAddresses(descriptorTable: info.descriptorTable, availRing: info.driverArea,
                                                             usedRing: info.deviceArea, guestPhysical: true)
                session.queues[i].kick = kick
                session.queues[i].kickSet = true
                session.queues[i].interrupt = kernel.interrupt(i)
                session.queues[i].enabled = true
                try session.startQueueIfReady(i)
            }
            logger.info("driver ready: features 0x\(String(f, radix: 16)), \(session.queues.filter { $0.running != nil }.count) queue(s) running, \(iotlb.count) IOTLB mapping(s)")
            return true
        } catch {
            logger.error("cannot start the device: \(error)\(iotlb.lastFailure.map { " (\($0))" } ?? "")")
            stopQueues()
            return false
        }
    }

    private func stopQueues() {
        session.stopAllQueues()
        for i in kicks.indices where kicks[i] != nil {
            try? kernel.setKick(i, nil)
            kicks[i] = nil
        }
    }

    /// Device reset: queues stop and forget their state, mappings go.
    func reset() {
        stopQueues()
        // The next driver starts from scratch: nothing of this one's is in flight any more.
        inflight?.clear()
        session.reset()
        session.dropMemory()
        iotlb.clear()
        status = 0
    }
}
