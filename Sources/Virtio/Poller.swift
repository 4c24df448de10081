#if canImport(Glibc)
import Glibc
#endif
import CVdevd

/// A poller thread: owns a set of queues from any devices and VMs, one io_uring shared by them, and does
/// everything for them (pop, submit, reap, push used, notify). It spins while there is work and for
/// `pollMicroseconds` after, then arms notifications and sleeps in epoll (the SPDK reactor model).
/// Other threads talk to it only through commands; they never touch a live ring.
public final class Poller {
    public let id: Int
    public let cpu: Int32?
    public let pollMicroseconds: UInt64
    public let ioRing: IORing
    /// Busy and idle time, for the operator's stats.
    public let stats = PollerStats()
    /// Guest memory registered with ioRing for fixed-buffer queues (control threads manage it).
    public let fixedBufferTable: FixedBufferTable

    private let epfd: Int32
    private let control: EventFD
    private let commandsLock = Lock()
    private var commands: [Command] = []
    /// Commands taken out of `commands`, run on the poller; swapped with it so a pass allocates nothing.
    private var takenCommands: [Command] = []
    /// 1 while commands wait: set under the lock, read without it on every pass (no lock when there is nothing).
    private let commandsPending = UnsafeMutablePointer<UInt8>.allocate(capacity: 1)
    private var thread: pthread_t?
    private var running = true

    private struct Slot {
        var binding: QueueBinding
        var handler: QueueHandler
        var stopping: Completion<UInt16>?
        /// When the stop was asked for, and whether in-flight requests were already asked to cancel.
        var stopAskedAt: UInt64 = 0
        var cancelled = false
        var broken = false
        /// Memory tables replaced while requests were in flight: their mappings stay until those complete.
        var retired: [GuestMemory] = []
    }
    private var slotsWithRetiredMemory = 0
    private var stoppingCount = 0
    /// Stopped queues whose abandoned requests the device has not answered yet: their slot ids stay taken (late
    /// completions still route to them) and their mappings stay alive until it does.
    private var zombies: [(id: Int, slot: Slot)] = []
    /// How long a stopping queue waits for requests at the device before cancelling them, and then before
    /// failing what is left.
    public let stopTimeoutMicros: UInt64
    var cancelGraceMicros: UInt64 { max(1, stopTimeoutMicros / 4) }
    private var slots: [Slot?] = []
    /// The queues served on each pass, without reference counting (`slots` holds the references).
    private struct Active {
        let slot: Int
        unowned(unsafe) let handler: QueueHandler
        unowned(unsafe) let binding: QueueBinding
        /// Broken by the guest, or stopping: not served, not armed (mirrors the slot, read without copying it).
        var paused = false
    }
    private var active: ContiguousArray<Active> = []
    /// Completion routing by slot id, without reference counting.
    private var completionTargets: ContiguousArray<Active?> = []
    /// Queues assigned to this poller, for balancing (read under the commands lock by the control side).
    private var assignedCount = 0
    /// The SIGBUS guard's generation this poller last looked at (0: none yet; a new queue is checked at attach).
    private var seenFaultGeneration: UInt64 = 0

    enum Command {
        case attach(QueueBinding, FixedBufferMap?, (QueueContext) throws -> QueueHandler, Completion<Result<UInt16, Error>>)
        case detach(UInt16, Completion<UInt16>)
        case updateMemory([UInt16], GuestMemory, [UInt16: FixedBufferMap?], Completion<Void>)
        case replaceInterrupt(UInt16, InterruptNotifier?, Completion<Void>)
        case setDirtyLog(UInt16, DirtyLog?, UInt64?, Completion<Void>)
        case exit
    }

    public static let defaultStopTimeoutMicros: UInt64 = 10_000_000
    static let tagControl: UInt64 = 1 << 62
    static let tagAIO: UInt64 = 1 << 62 | 2
    static let tagWatcher: UInt64 = 1 << 61
    private var watchers: [UInt64: FDWatcher] = [:]
    private var nextWatchToken: UInt64 = 0

    /// Adds fd to this poller's epoll; `w.fdReady` runs on the poller thread. Poller thread only.
    public func watch(fd: Int32, events: UInt32, _ w: FDWatcher) throws -> UInt64 {
        nextWatchToken += 1
        let tag = Poller.tagWatcher | nextWatchToken
        _ = try checkNegErrno("epoll_ctl(ADD)", vdv_epoll_add(epfd, fd, events, tag))
        watchers[tag] = w
        return tag
    }

    /// Changes the events a watched fd is waited for (e.g. drop EPOLLOUT once a buffer drained).
    public func rewatch(fd: Int32, events: UInt32, token: UInt64) {
        _ = vdv_epoll_mod(epfd, fd, events, token)
    }

    /// Removes fd from the epoll; call before closing it. Poller thread only.
    public func unwatch(fd: Int32, token: UInt64) {
        _ = vdv_epoll_del(epfd, fd)
        watchers[token] = nil
    }

    private func dispatch(tag: UInt64, events: UInt32) {
        if tag == Poller.tagControl { control.drain() }
        else if tag == Poller.tagAIO { aio?.eventFD.drain() }
        else if tag & Poller.tagWatcher != 0 { watchers[tag]?.fdReady(events: events) }
        else if Int(tag) < slots.count, let slot = slots[Int(tag)] {
            slot.binding.kick?.drain()
            slot.binding.stats.add(.kicks)
        }
    }
    private var aio: AIOContext?

    /// The poller's AIO context, made on first use; poller thread only.
    func aioContext() throws -> AIOContext {
        if let aio { return aio }
        let a = try AIOContext()
        try addToEpoll(a.eventFD.fd, Poller.tagAIO)
        aio = a
        return a
    }

    public let workers: IOWorkers
    /// How placing the io_uring workers went: 0, or -errno (an old kernel, CPUs outside the cpuset).
    public private(set) var workerPlacement: Int32 = 0
    /// The poller thread's id (its io_uring workers are named iou-wrk-TID).
    public private(set) var threadID: Int32 = 0

    public init(id: Int, cpu: Int32? = nil, pollMicroseconds: UInt64 = 0, ringEntries: UInt32 = 1024,
                workers: IOWorkers = IOWorkers(), stopTimeoutMicros: UInt64 = Poller.defaultStopTimeoutMicros) throws {
        self.id = id
        self.stopTimeoutMicros = stopTimeoutMicros
        self.workers = workers
        self.cpu = cpu
        self.pollMicroseconds = pollMicroseconds
        // A blk request may take 16 submissions at once (DISCARD ranges): the ring holds at least that.
        let entries = max(ringEntries, 16)
        ioRing = try IORing(entries: entries, cqEntries: entries * 4)
        fixedBufferTable = FixedBufferTable(target: ioRing)
        control = try EventFD()
        epfd = try checkNegErrno("epoll_create1", vdv_epoll_create())
        commandsPending.initialize(to: 0)
        try addToEpoll(control.fd, Poller.tagControl)
    }

    deinit {
        closeFD(epfd)
        commandsPending.deallocate()
    }

    private func addToEpoll(_ fd: Int32, _ tag: UInt64) throws {
        _ = try checkNegErrno("epoll_ctl(ADD)", vdv_epoll_add(epfd, fd, UInt32(VDV_EPOLLIN), tag))
    }

    public func start() {
        thread = spawnThread { [self] in run() }
    }

    public func stop() {
        send(.exit)
        if let t = thread { pthread_join(t, nil) }
        thread = nil
    }

    public var queueCount: Int { commandsLock.withLock { assignedCount } }

    private func send(_ c: Command) {
        commandsLock.withLock {
            commands.append(c)
            vdv_store_relaxed_u8(commandsPending, 1)
        }
        control.signal()
    }

    // MARK: control-side API (blocking until the poller has acted)

    /// Starts serving a queue; returns its slot id on this poller. With `fixedBuffers`, the queue's guest memory
    /// is registered with the poller's io_uring first (here, on the calling thread: pinning can take a while).
    public func attach(_ binding: QueueBinding, fixedBuffers: Bool = false,
                       makeHandler: @escaping (QueueContext) throws -> QueueHandler) throws -> UInt16 {
        let done = Completion<Result<UInt16, Error>>()
        let map = fixedBuffers ? fixedBufferTable.acquire(binding.vq.memory) : nil
        commandsLock.withLock { assignedCount += 1 }
        send(.attach(binding, map, makeHandler, done))
        switch done.wait() {
        case .success(let s):
            if fixedBuffers { fixedBufferTable.remember(slot: s, map) }
            return s
        case .failure(let e):
            commandsLock.withLock { assignedCount -= 1 }
            fixedBufferTable.release(map)
            throw e
        }
    }

    /// Stops a queue after its in-flight requests complete; returns its last avail index.
    public func detach(slot: UInt16) -> UInt16 {
        let done = Completion<UInt16>()
        send(.detach(slot, done))
        let r = done.wait()
        commandsLock.withLock { assignedCount -= 1 }
        fixedBufferTable.release(fixedBufferTable.forget(slot: slot))
        return r
    }

    /// Hands a new memory table to running queues; returns once they use it. Mappings of the old table
    /// that in-flight requests still point into are kept until those requests complete; so are its pinned pages
    /// (the kernel holds them for requests that use them).
    public func updateMemory(slots ids: [UInt16], memory: GuestMemory) {
        var maps: [UInt16: FixedBufferMap?] = [:]
        var old: [FixedBufferMap?] = []
        for id in ids {
            guard let held = fixedBufferTable.map(ofSlot: id) else { continue }
            old.append(held)
            maps[id] = fixedBufferTable.acquire(memory)
        }
        let done = Completion<Void>()
        send(.updateMemory(ids, memory, maps, done))
        done.wait()
        for (id, map) in maps { fixedBufferTable.remember(slot: id, map) }
        for m in old { fixedBufferTable.release(m) }
    }

    /// Gives a running queue a new interrupt (vhost-user SET_VRING_CALL); returns once the poller uses it.
    public func replaceInterrupt(slot: UInt16, interrupt: InterruptNotifier?) {
        let done = Completion<Void>()
        send(.replaceInterrupt(slot, interrupt, done))
        done.wait()
    }

    /// The same with a call eventfd.
    public func replaceCall(slot: UInt16, call: EventFD?) {
        replaceInterrupt(slot: slot, interrupt: call.map { .eventFD($0) })
    }

    /// Starts, stops or moves dirty-page logging of a running queue (live migration); returns once it is in effect.
    public func setDirtyLog(slot: UInt16, log: DirtyLog?, usedLogAddress: UInt64?) {
        let done = Completion<Void>()
        send(.setDirtyLog(slot, log, usedLogAddress, done))
        done.wait()
    }

    // MARK: poller thread

    private func run() {
        vdv_set_thread_name("vdevd-poll\(id)")
        if let cpu { _ = vdv_pin_thread_to_cpu(cpu) }
        threadID = vdv_thread_id()
        workerPlacement = ioRing.placeWorkers(workers)
        let maxEvents = 64
        let tags = UnsafeMutablePointer<UInt64>.allocate(capacity: maxEvents)
        let events = UnsafeMutablePointer<UInt32>.allocate(capacity: maxEvents)
        defer {
            tags.deallocate()
            events.deallocate()
        }
        var spin = SpinWindow(limit: pollMicroseconds)
        var sleeping = false
        var passStart = monotonicMicros()
        while running {
            var guestWork = false
            // Epoll events: after the ring said there are some, and on every pass while host fds are watched
            // (a spinning poller does not sleep in the ring, so nothing else would tell it).
            if ioRing.wakeFired || !watchers.isEmpty {
                ioRing.wakeFired = false
                while true {
                    let n = vdv_epoll_wait(epfd, tags, events, Int32(maxEvents), 0)
                    for i in 0..<Int(max(n, 0)) {
                        dispatch(tag: tags[i], events: events[i])
                        if tags[i] & Poller.tagWatcher != 0 { guestWork = true }
                    }
                    if n < Int32(maxEvents) { break }
                }
            }
            // After the epoll drain: the control eventfd it consumed may stand for commands queued just now.
            if vdv_load_relaxed_u8(commandsPending) != 0 { guestWork = runCommands() || guestWork }
            // One load a pass: a SIGBUS on some guest mapping (the guard replaced it with zeroes) stops its queues.
            let faults = GuestMapping.faultGeneration
            if faults != seenFaultGeneration {
                seenFaultGeneration = faults
                stopQueuesOnVanishedMemory()
            }
            var completions = ioRing.reap(deliverCompletion) > 0
            if let aio, aio.reap(deliverCompletion) > 0 { completions = true }
            // Index loops: iterating the array itself would retain its storage on every pass.
            var i = 0
            while i < active.count {
                let a = active[i]
                i += 1
                if a.paused { continue }
                do {
                    if try a.handler.process() { guestWork = true }
                } catch {
                    slots[a.slot]!.broken = true
                    pause(slot: a.slot)
                    a.binding.stats.add(.errors)
                    // Zeroes where the memory vanished break ring rules too; the vanishing is the cause to report.
                    a.binding.onError(a.binding.vq.memory.vanished ? VirtqueueError.guestMemoryVanished : error)
                }
            }
            ioRing.submit()
            aio?.submit()
            i = 0
            while i < active.count {
                active[i].binding.flush()
                i += 1
            }
            if stoppingCount > 0 { finishStopping() }
            if !zombies.isEmpty { releaseZombies() }
            if slotsWithRetiredMemory > 0 { releaseRetiredMemory() }
            let now = monotonicMicros()
            if guestWork || completions { stats.addBusy(now &- passStart) } else { stats.addIdle(now &- passStart) }
            passStart = now
            let deviceBusy = ioRing.ioInFlight > 0 || (aio?.inFlight ?? 0) > 0
            if guestWork || completions {
                // A completion counts too: the guest's answer to it (its next request) is what the spin waits for.
                spin.work(at: now)
                // Notifications stay on while the poller will sleep again on the device; off while it spins.
                if sleeping && !deviceBusy && spin.limit > 0 { setNotifications(enabled: false); sleeping = false }
                continue
            }
            // Nothing this pass. Spin for the guest's next request while that tends to pay; with requests at the
            // device, sleep: their completions wake the poller from the ring.
            if spin.shouldSpin(at: now, deviceBusy: deviceBusy) {
                vdv_cpu_relax()
                continue
            }
            // Arm notifications, then look again: a buffer added before the arm would otherwise sleep with us.
            setNotifications(enabled: true)
            sleeping = true
            if anyPending() || vdv_load_relaxed_u8(commandsPending) != 0 { continue }
            // A stopping queue waits for the device only so long: wake to cancel, or fail, what is left.
            ioRing.wait(epollFD: epfd, timeoutMicros: stoppingCount > 0 || !zombies.isEmpty ? 100_000 : nil)
            // Sleep is idle time; the next pass is measured from the wake-up.
            passStart = monotonicMicros()
            stats.addIdle(passStart &- now)
        }
        // Exit: nothing may be left running; drain what is in flight.
        for a in active { if let slot = slots[a.slot] { removeFromEpoll(slot) } }
    }

    /// Queues whose guest memory vanished (see GuestMapping) stop with an error; other queues go on.
    private func stopQueuesOnVanishedMemory() {
        var i = 0
        while i < active.count {
            let a = active[i]
            i += 1
            if a.paused || !a.binding.vq.memory.vanished { continue }
            slots[a.slot]!.broken = true
            pause(slot: a.slot)
            a.binding.stats.add(.errors)
            a.binding.onError(VirtqueueError.guestMemoryVanished)
        }
    }

    /// An I/O completion goes to the queue whose slot its user_data names.
    @inline(__always)
    private func deliverCompletion(_ ud: UInt64, _ res: Int32) {
        let s = Int(ud >> 32)
        if s < completionTargets.count, let t = completionTargets[s] {
            t.handler.complete(tag: UInt32(truncatingIfNeeded: ud), result: res)
        }
    }

    private func setNotifications(enabled: Bool) {
        var i = 0
        while i < active.count {
            let a = active[i]
            i += 1
            if a.paused { continue }
            if enabled { a.binding.vq.enableNotifications() } else { a.binding.vq.disableNotifications() }
            // Those are writes to the used ring too (avail_event, or its flags): a migration must carry them.
            a.binding.logUsedRing()
        }
    }

    private func anyPending() -> Bool {
        var i = 0
        while i < active.count {
            let a = active[i]
            i += 1
            if !a.paused && a.handler.hasPendingWork() { return true }
        }
        return false
    }

    private func runCommands() -> Bool {
        commandsLock.withLock {
            swap(&commands, &takenCommands)
            vdv_store_relaxed_u8(commandsPending, 0)
        }
        defer { takenCommands.removeAll(keepingCapacity: true) }
        if takenCommands.isEmpty { return false }
        for c in takenCommands {
            switch c {
            case .attach(let binding, let map, let make, let done):
                // A slot id is free once nothing can complete to it any more (zombies keep theirs).
                let id = slots.indices.first(where: { slots[$0] == nil && completionTargets[$0] == nil }) ?? slots.count
                guard id < Int(UInt16.max) else {
                    done.fulfill(.failure(SystemError("attach", errno: ENOSPC)))
                    continue
                }
                do {
                    let handler = try make(QueueContext(binding: binding, poller: self, slot: UInt16(id), fixedBuffers: map))
                    if let kick = binding.kick { try addToEpoll(kick.fd, UInt64(id)) }
                    if id == slots.count {
                        slots.append(nil)
                        completionTargets.append(nil)
                    }
                    slots[id] = Slot(binding: binding, handler: handler)
                    let a = Active(slot: id, handler: handler, binding: binding)
                    active.append(a)
                    completionTargets[id] = a
                    // Memory that vanished before the queue came here: looked at on this pass.
                    if binding.vq.memory.vanished { seenFaultGeneration = 0 }
                    done.fulfill(.success(UInt16(id)))
                } catch {
                    done.fulfill(.failure(error))
                }
            case .detach(let id, let done):
                if Int(id) < slots.count, slots[Int(id)] != nil, slots[Int(id)]!.stopping == nil {
                    slots[Int(id)]!.stopping = done
                    pause(slot: Int(id))
                    slots[Int(id)]!.stopAskedAt = monotonicMicros()
                    stoppingCount += 1
                } else {
                    done.fulfill(0)
                }
            case .updateMemory(let ids, let memory, let maps, let done):
                for id in ids where Int(id) < slots.count {
                    guard let slot = slots[Int(id)] else { continue }
                    if slot.handler.inflight > 0 {
                        if slots[Int(id)]!.retired.isEmpty { slotsWithRetiredMemory += 1 }
                        slots[Int(id)]!.retired.append(slot.binding.vq.memory)
                    }
                    do { try slot.binding.vq.remap(memory: memory) } catch {
                        slots[Int(id)]!.broken = true
                        pause(slot: Int(id))
                        slot.binding.onError(error)
                    }
                    if let map = maps[id] { slot.handler.fixedBuffersChanged(map) }
                }
                done.fulfill(())
            case .replaceInterrupt(let id, let n, let done):
                if Int(id) < slots.count, let slot = slots[Int(id)] { slot.binding.replaceInterrupt(n) }
                done.fulfill(())
            case .setDirtyLog(let id, let log, let used, let done):
                if Int(id) < slots.count, let slot = slots[Int(id)] { slot.binding.setDirtyLog(log, usedLogAddress: used) }
                done.fulfill(())
            case .exit:
                running = false
            }
        }
        return true
    }

    /// Old memory tables go once the requests that pointed into them have completed.
    private func releaseRetiredMemory() {
        for a in active {
            let s = a.slot
            guard let slot = slots[s], !slot.retired.isEmpty, slot.handler.inflight == 0 else { continue }
            slots[s]!.retired.removeAll()
            slotsWithRetiredMemory -= 1
        }
    }

    /// Queues asked to stop leave once their in-flight requests have completed and been published. A device that
    /// does not answer holds them only `stopTimeoutMicros`: then what is in flight is cancelled, and after a grace
    /// what is still there is failed to the driver with IOERR.
    private func finishStopping() {
        var i = 0
        let now = monotonicMicros()
        while i < active.count {
            let s = active[i].slot
            if let slot = slots[s], slot.stopping != nil, slot.handler.inflight > 0 {
                // What the handler does a piece a pass (large inline transfers) goes on while the queue drains.
                _ = slot.handler.continueStarted()
                let waited = now &- slot.stopAskedAt
                if !slot.cancelled && waited >= stopTimeoutMicros {
                    slots[s]!.cancelled = true
                    slot.binding.report("\(slot.handler.inflight) request(s) still at the device \(waited / 1000) ms after the queue was asked to stop: cancelling them")
                    slot.handler.cancelInFlight()
                    ioRing.submit()
                } else if slot.cancelled && waited >= stopTimeoutMicros + cancelGraceMicros {
                    let n = slot.handler.abandonInFlight()
                    slot.binding.report("\(n) request(s) the device did not give back failed with IOERR; their buffers stay reserved until it does")
                }
            }
            if let slot = slots[s], let done = slot.stopping, slot.handler.inflight == 0 {
                slot.binding.flush()
                removeFromEpoll(slot)
                if !slot.retired.isEmpty { slotsWithRetiredMemory -= 1 }
                stoppingCount -= 1
                active.remove(at: i)
                if slot.handler.abandonedInFlight > 0 { zombies.append((s, slot)) } else { completionTargets[s] = nil }
                slots[s] = nil
                slot.handler.detached()
                done.fulfill(slot.binding.vq.lastAvailIdx)
                continue
            }
            i += 1
        }
    }

    /// A queue stops being served on each pass (broken, or stopping); the control path, not per pass.
    private func pause(slot: Int) {
        if let i = active.firstIndex(where: { $0.slot == slot }) { active[i].paused = true }
    }

    /// Stopped queues whose abandoned requests have all come back free their slot ids and mappings.
    private func releaseZombies() {
        zombies.removeAll { z in
            guard z.slot.handler.abandonedInFlight == 0 else { return false }
            completionTargets[z.id] = nil
            return true
        }
    }

    private func removeFromEpoll(_ slot: Slot) {
        if let kick = slot.binding.kick { _ = vdv_epoll_del(epfd, kick.fd) }
    }
}

/// CLOCK_MONOTONIC in microseconds.
@inline(__always)
public func monotonicMicros() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000 + UInt64(ts.tv_nsec) / 1000
}

/// How long a poller keeps spinning for the guest's next request before it arms notifications and sleeps.
/// Starts at the configured limit; a window that runs out with nothing halves the next one, and work that
/// arrives within the limit of the last work (while spinning, or after a sleep a full window would have
/// covered) restores it. While requests are at the device it does not spin: their completions wake the
/// poller from the ring, and spinning through the device's latency would only burn the core (and starve the
/// io_uring workers that share it).
struct SpinWindow {
    let limit: UInt64
    private var window: UInt64
    private var lastWork: UInt64
    private var missCounted = false

    init(limit: UInt64) {
        self.limit = limit
        window = limit
        lastWork = monotonicMicros()
    }

    mutating func work(at now: UInt64) {
        if now &- lastWork <= limit { window = limit }
        lastWork = now
        missCounted = false
    }

    mutating func shouldSpin(at now: UInt64, deviceBusy: Bool) -> Bool {
        if deviceBusy { return false }
        if now &- lastWork < window { return true }
        if !missCounted {
            window = max(limit / 16, window / 2)
            missCounted = true
        }
        return false
    }
}
