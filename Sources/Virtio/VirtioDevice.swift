/// A device model: what it offers and how it serves a ready queue. It never sees a socket or an ioctl.
public protocol VirtioDevice: AnyObject {
    var deviceID: VirtioDeviceID { get }
    /// Feature bits offered to the driver; one declared constant per device, asserted by tests.
    var offeredFeatures: UInt64 { get }
    var maxQueues: Int { get }
    var maxQueueSize: UInt32 { get }
    /// Config space bytes [offset, offset+count), zero past the device's structure.
    func readConfig(offset: Int, count: Int) -> [UInt8]
    /// A driver write to config space; false if the field is read-only.
    func writeConfig(offset: Int, bytes: [UInt8]) -> Bool
    /// The features the driver accepted (before any queue starts).
    func featuresAcked(_ features: UInt64)
    /// Builds the per-queue request handler; called on the control thread, used only on the poller thread.
    func makeQueueHandler(context: QueueContext) throws -> QueueHandler
    /// Device reset: forget negotiated state (queues are already stopped).
    func reset()
    /// True when all queues of one device must run on the same poller (they share connection state).
    var queuesSharePoller: Bool { get }
    /// True when the device's queues want guest memory registered with their poller's io_uring (fixed buffers).
    var usesFixedBuffers: Bool { get }
    /// True when a request left in flight by a backend that died may simply be started again (blk): the device
    /// offers in-flight tracking so a restarted backend resubmits exactly those.
    var resubmitsInflight: Bool { get }
    /// True when every write the device makes to guest memory goes through QueueBinding.logWrite (or lands in
    /// buffers it returns with their used entries, as blk's do): the device can be live-migrated (VHOST_F_LOG_ALL).
    var logsDirtyPages: Bool { get }
}

extension VirtioDevice {
    public var queuesSharePoller: Bool { false }
    public var usesFixedBuffers: Bool { false }
    public var resubmitsInflight: Bool { false }
    public var logsDirtyPages: Bool { false }
}

/// Serves one queue on its poller. Every call happens on that poller's thread.
public protocol QueueHandler: AnyObject {
    /// Pops and starts available requests; true if it did any work.
    func process() throws -> Bool
    /// An I/O submitted with IORing.userData(slot:tag:) finished.
    func complete(tag: UInt32, result: Int32)
    /// Requests started and not yet completed (the queue drains these before it stops).
    var inflight: Int { get }
    /// Counters for stats, readable from any thread (relaxed).
    var stats: QueueStats { get }
    /// The queue left its poller (stopped and drained); last call on the poller thread.
    func detached()
    /// Whether process() has something to do now; checked after notifications are armed, before sleeping.
    /// A queue whose avail entries wait for an outside event (vsock rx buffers) answers false for them.
    func hasPendingWork() -> Bool
    /// The queue must stop and requests are still at the device past the stop timeout: ask the engine to cancel
    /// them (the ones it cancels complete with an error as usual).
    func cancelInFlight()
    /// Still not back after the cancel: fail every request left with IOERR to the driver now. Their buffers stay
    /// reserved until the device does answer (`abandonedInFlight`). Returns how many were failed.
    func abandonInFlight() -> Int
    /// Requests failed by abandonInFlight whose completion has not come back from the device yet.
    var abandonedInFlight: Int { get }
    /// The queue's memory changed, and with it where guest memory lies in the poller's registered buffers.
    func fixedBuffersChanged(_ map: FixedBufferMap?)
    /// Moves on requests the handler does a piece a pass (large inline transfers); the poller calls it for a queue
    /// that is stopping, which process() no longer runs for. True if any moved.
    func continueStarted() -> Bool
}

extension QueueHandler {
    public func fixedBuffersChanged(_ map: FixedBufferMap?) {}
    public func continueStarted() -> Bool { false }
    public func detached() {}
    public func cancelInFlight() {}
    public func abandonInFlight() -> Int { 0 }
    public var abandonedInFlight: Int { 0 }
}

/// Something with an fd in a poller's epoll (a host socket of a vsock connection, a listener).
public protocol FDWatcher: AnyObject {
    func fdReady(events: UInt32)
}

/// What a queue handler is given: the ring, its poller (for I/O engines) and the slot id to tag its I/O with.
public struct QueueContext {
    public let binding: QueueBinding
    public let poller: Poller
    public let slot: UInt16
    /// Where the queue's guest memory lies in the poller's registered buffers (fixed-buffer devices only).
    public let fixedBuffers: FixedBufferMap?
    public var ioRing: IORing { poller.ioRing }
    /// The poller's AIO context, created on first use (call on the poller thread, i.e. in makeQueueHandler).
    public func aio() throws -> AIOContext { try poller.aioContext() }
}
