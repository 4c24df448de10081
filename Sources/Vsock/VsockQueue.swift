import Virtio

/// One of the device's three queues; all three share the device's engine on one poller.
final class VsockQueue: QueueHandler {
    let engine: VsockEngine
    let index: Int
    let stats: QueueStats
    var inflight: Int { 0 }

    init(engine: VsockEngine, index: Int, binding: QueueBinding) {
        self.engine = engine
        self.index = index
        stats = binding.stats
        engine.attach(index, binding)
    }

    func process() throws -> Bool {
        switch index {
        case VsockLayout.rxQueue: return try engine.processRx()
        case VsockLayout.txQueue: return try engine.processTx()
        default: return try engine.processEvent()
        }
    }

    func complete(tag: UInt32, result: Int32) {}

    /// rx buffers alone are no work: only packets waiting for them, or connections stalled on them, are.
    func hasPendingWork() -> Bool {
        switch index {
        case VsockLayout.rxQueue: return engine.rxWorkPending
        case VsockLayout.txQueue: return (engine.tx.flatMap { try? $0.vq.pendingCount() } ?? 0) > 0
        default: return engine.resetEventDue && (engine.event.flatMap { try? $0.vq.pendingCount() } ?? 0) > 0
        }
    }

    func detached() { engine.device.queueDetached(index, engine: engine) }
}
