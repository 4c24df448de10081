import Logging
import Virtio

/// A bad request from a transport's peer that the device session refuses (the transport answers it).
struct DeviceSessionError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// The transport-neutral life of one device while a driver uses it: negotiated features, the memory table,
/// each queue's state, which poller runs it, and reset. vhost-user and VDUSE each turn their own messages into
/// these calls. Runs on the export's control thread; rings run on pollers and are touched only through them.
final class DeviceSession {
    struct Queue {
        var num: UInt32 = 0
        var base: UInt16 = 0
        var addresses: VringAddresses?
        var kick: EventFD?
        /// The transport has given the queue its kick notifier (vhost-user: SET_VRING_KICK, even without an fd).
        var kickSet = false
        var interrupt: InterruptNotifier?
        /// Signalled when the guest broke a ring rule and the queue stopped (vhost-user's err fd).
        var err: EventFD?
        var enabled = false
        var running: (poller: Poller, slot: UInt16)?
        /// Where writes to the used ring are logged during a live migration (vhost-user VHOST_VRING_F_LOG).
        var usedLogAddress: UInt64?
    }

    let device: VirtioDevice
    let pollers: PollerGroup
    let preferredPoller: Int?
    let queueStats: [QueueStats]
    var logger: Logger

    /// Features the rings latch when they start (the driver's, transport bits included).
    var features: UInt64 = 0
    private(set) var memory = GuestMemory.empty
    var queues: [Queue]
    private var sessionPoller: Poller?
    /// Told which poller serves a queue (nil once it stops), for the export's stats; control thread.
    var onPlacement: (_ queue: Int, _ poller: Int?) -> Void = { _, _ in }
    /// A region where requests in flight are recorded, kept across backend restarts (vhost-user INFLIGHT_SHMFD).
    var inflight: InflightMemory?
    /// The dirty-page bitmap of a live migration; rings write to it while `loggingDirtyPages`.
    var dirtyLog: DirtyLog?
    var loggingDirtyPages: Bool { features & VirtioFeature.logAll != 0 }

    init(device: VirtioDevice, pollers: PollerGroup, preferredPoller: Int?, queueStats: [QueueStats], logger: Logger) {
        self.device = device
        self.pollers = pollers
        self.preferredPoller = preferredPoller
        self.queueStats = queueStats
        self.logger = logger
        queues = Array(repeating: Queue(), count: device.maxQueues)
    }

    var anyRunning: Bool { queues.contains { $0.running != nil } }

    // MARK: memory

    /// Swaps the table; running rings move to it through their pollers before the old one is released (each
    /// poller keeps the old mappings until requests using them complete). Then starts rings now ready.
    func installMemory(_ new: GuestMemory, startReady: Bool = true) throws {
        memory = new
        var byPoller: [ObjectIdentifier: (Poller, [UInt16])] = [:]
        for q in queues {
            guard let (p, s) = q.running else { continue }
            byPoller[ObjectIdentifier(p), default: (p, [])].1.append(s)
        }
        for (_, (p, slots)) in byPoller { p.updateMemory(slots: slots, memory: new) }
        logger.debug("memory table: \(new.regions.count) regions")
        if startReady { for i in queues.indices where queues[i].running == nil { try startQueueIfReady(i) } }
    }

    /// Forgets the memory table (queues must be stopped).
    func dropMemory() { memory = GuestMemory.empty }

    // MARK: dirty logging

    private var activeDirtyLog: DirtyLog? { loggingDirtyPages ? dirtyLog : nil }

    /// Running rings take the current logging state.
    func updateDirtyLogging() {
        for q in queues {
            guard let (p, s) = q.running else { continue }
            p.setDirtyLog(slot: s, log: activeDirtyLog, usedLogAddress: q.usedLogAddress)
        }
    }

    // MARK: queues

    /// A running queue gets a new interrupt; a stopped one takes it when it starts.
    func setInterrupt(_ i: Int, _ n: InterruptNotifier?) {
        queues[i].interrupt = n
        if let (p, s) = queues[i].running { p.replaceInterrupt(slot: s, interrupt: n) }
    }

    /// Starts queue `i` on a poller once it is enabled, has its kick notifier, addresses and size, and memory.
    func startQueueIfReady(_ i: Int) throws {
        let q = queues[i]
        guard q.running == nil, q.enabled, q.kickSet, let addr = q.addresses, q.num > 0,
              !memory.regions.isEmpty || memory.faulter != nil else { return }
        let vq: SplitVirtqueue
        do {
            vq = try SplitVirtqueue(index: i, size: q.num, addresses: addr, memory: memory,
                                    features: features, lastAvailIdx: q.base)
        } catch {
            throw DeviceSessionError("vring \(i): \(error)")
        }
        if let inflight {
            if let region = inflight.queue(i, size: Int(q.num)) {
                let n = vq.trackInflight(region)
                if n > 0 { logger.notice("queue \(i): resubmitting \(n) request(s) left in flight by the previous backend") }
            } else {
                logger.warning("queue \(i): the in-flight region has no place for it (\(inflight.numQueues) queues of \(inflight.queueSize), ring of \(q.num)): not tracked")
            }
        }
        let err = q.err
        let log = logger
        let binding = QueueBinding(name: "q\(i)", vq: vq, kick: q.kick, interrupt: q.interrupt, stats: queueStats[i]) { e in
            // On the poller thread: the guest broke a ring rule; this queue stops, nothing else does.
            log.error("queue \(i) stopped: \(e)")
            err?.signal()
        }
        binding.report = { log.warning("queue \(i): \($0)") }
        binding.setDirtyLog(activeDirtyLog, usedLogAddress: q.usedLogAddress)
        // Devices whose queues share state (vsock) keep all of them on one poller.
        let poller: Poller
        if device.queuesSharePoller {
            if sessionPoller == nil { sessionPoller = pollers.pick(preferred: preferredPoller) }
            poller = sessionPoller!
        } else {
            poller = pollers.pick(preferred: preferredPoller)
        }
        let dev = device
        let slot = try poller.attach(binding, fixedBuffers: dev.usesFixedBuffers) { ctx in try dev.makeQueueHandler(context: ctx) }
        queues[i].running = (poller, slot)
        onPlacement(i, poller.id)
        logger.info("queue \(i) started on poller \(poller.id) (size \(q.num), avail base \(q.base))")
        if dev.usesFixedBuffers {
            if let map = poller.fixedBufferTable.map(ofSlot: slot) ?? nil {
                logger.info("queue \(i): guest memory registered with io_uring as \(map.chunkCount) fixed buffer(s)")
            } else {
                let why = poller.fixedBufferTable.lastFailure ?? "guest memory is not preallocated (QEMU prealloc=on or hugepages)"
                logger.notice("queue \(i): no fixed buffers: \(why)")
            }
        }
    }

    /// Stops queue `i` once its in-flight requests complete; keeps its avail index as the base.
    func stopQueue(_ i: Int) {
        guard let (p, s) = queues[i].running else { return }
        queues[i].base = p.detach(slot: s)
        queues[i].running = nil
        onPlacement(i, nil)
        logger.info("queue \(i) stopped at avail index \(queues[i].base)")
    }

    func stopAllQueues() { for i in queues.indices { stopQueue(i) } }

    /// Device reset: every queue stops and forgets its state, negotiated state goes, the device model resets.
    func reset() {
        stopAllQueues()
        queues = Array(repeating: Queue(), count: device.maxQueues)
        features = 0
        inflight = nil
        dirtyLog = nil
        device.reset()
    }

    /// Driver gone: reset and drop every mapping.
    func teardown() {
        reset()
        memory = GuestMemory.empty
    }
}
