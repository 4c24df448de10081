/// A started queue as the poller sees it: the ring, its kick eventfd and interrupt, and used entries waiting
/// to be published. Created by a transport, owned by one poller from attach to detach.
public final class QueueBinding {
    public let name: String
    public let vq: SplitVirtqueue
    public let kick: EventFD?
    /// How the driver is interrupted (nil: never, e.g. a vhost-user frontend that polls).
    public private(set) var interrupt: InterruptNotifier?
    public let stats: QueueStats
    /// Called on the poller thread when the guest broke a ring rule and the queue stopped.
    public let onError: (Error) -> Void
    /// Where the poller tells the operator about this queue (requests cancelled at a stop); any thread.
    public var report: (String) -> Void = { _ in }
    private var unpublished = 0
    /// Live migration: where the device's writes to guest memory are logged (nil: not logging), and the guest
    /// address the used ring's writes are logged at (nil: the ring was not asked to log them). Poller thread.
    public private(set) var dirtyLog: DirtyLog?
    private var usedLogAddress: UInt64?

    public init(name: String, vq: SplitVirtqueue, kick: EventFD?, interrupt: InterruptNotifier?, stats: QueueStats,
                onError: @escaping (Error) -> Void) {
        self.stats = stats
        self.name = name
        self.vq = vq
        self.kick = kick
        self.interrupt = interrupt
        self.onError = onError
    }

    /// A queue interrupted through a call eventfd (vhost-user, tests).
    public convenience init(name: String, vq: SplitVirtqueue, kick: EventFD?, call: EventFD?, stats: QueueStats,
                            onError: @escaping (Error) -> Void) {
        self.init(name: name, vq: vq, kick: kick, interrupt: call.map { .eventFD($0) }, stats: stats, onError: onError)
    }

    /// Returns a finished request to the driver; published at the next flush().
    @inline(__always)
    public func complete(head: UInt16, length: UInt32) {
        vq.pushUsed(head: head, length: length)
        unpublished += 1
    }

    /// Publishes used entries and interrupts the driver if it wants to know.
    @inline(__always)
    public func flush() {
        guard unpublished > 0 else { return }
        unpublished = 0
        vq.publishUsed()
        logUsedRing()
        if vq.needsInterrupt(), let interrupt {
            interrupt.signal()
            stats.add(.notifications)
        }
    }

    /// While migrating, marks the whole used ring dirty (its flags, idx, elements and avail_event: a page or two),
    /// after the device wrote any of it: used entries, or the notification fields before the poller sleeps.
    @inline(__always)
    public func logUsedRing() {
        if let dirtyLog, let usedLogAddress { dirtyLog.mark(gpa: usedLogAddress, length: 6 + 8 * UInt64(vq.size)) }
    }

    /// Poller-thread only: a new interrupt for a running ring (vhost-user SET_VRING_CALL).
    func replaceInterrupt(_ n: InterruptNotifier?) { interrupt = n }

    /// Poller-thread only (or before the ring starts): logging starts, stops or moves to a new bitmap.
    public func setDirtyLog(_ log: DirtyLog?, usedLogAddress: UInt64?) {
        dirtyLog = log
        self.usedLogAddress = log == nil ? nil : usedLogAddress
    }

    /// The device wrote `length` bytes of guest memory at host address `p`.
    @inline(__always)
    public func logWrite(_ p: UnsafeRawPointer, length: Int) {
        dirtyLog?.mark(host: p, length: length, memory: vq.memory)
    }

    /// The device wrote the first `bytes` of a chain's device-writable buffers.
    @inline(__always)
    public func logWritten(_ segs: ChainSegments, bytes: Int) {
        guard let dirtyLog else { return }
        var left = bytes
        var i = segs.readableCount
        while left > 0 && i < segs.count {
            let n = min(left, segs.iov[i].iov_len)
            dirtyLog.mark(host: segs.iov[i].iov_base!, length: n, memory: vq.memory)
            left -= n
            i += 1
        }
    }
}
