import CVdevd
import Virtio

/// Where the switch leaves frames for one receiving queue (a guest rx queue or an uplink): a fixed ring of frame
/// references filled by senders on any poller under the switch lock, emptied by the receiver's poller.
/// A receiver that sleeps is woken through its doorbell, only if it said it was going to sleep (`armed`).
public final class RxEndpoint {
    public static let capacity = 1024
    let ring: UnsafeMutablePointer<NetFrameRef>
    var head = 0
    /// Frames waiting; written under the switch lock, read without it by the receiver's "anything to do?" check.
    let pendingCount: UnsafeMutablePointer<UInt32>
    let doorbell: EventFD
    let armed: UnsafeMutablePointer<UInt8>
    unowned(unsafe) var port: SwitchPort?

    public init() throws {
        ring = .allocate(capacity: RxEndpoint.capacity)
        pendingCount = .allocate(capacity: 1)
        pendingCount.initialize(to: 0)
        armed = .allocate(capacity: 1)
        armed.initialize(to: 0)
        doorbell = try EventFD()
    }

    deinit {
        ring.deallocate()
        pendingCount.deallocate()
        armed.deallocate()
    }

    var count: Int { Int(vdv_load_acquire_u32(pendingCount)) }

    /// Switch lock held.
    @inline(__always)
    func enqueue(_ f: NetFrameRef) -> Bool {
        let n = Int(pendingCount.pointee)
        guard n < RxEndpoint.capacity else { return false }
        f.retainFrame()
        ring[(head + n) & (RxEndpoint.capacity - 1)] = f
        vdv_store_release_u32(pendingCount, UInt32(n + 1))
        return true
    }

    /// Switch lock held: moves up to `max` frames to `out`.
    @inline(__always)
    func take(into out: UnsafeMutablePointer<NetFrameRef>, max: Int) -> Int {
        let n = min(Int(pendingCount.pointee), max)
        for i in 0..<n { out[i] = ring[(head + i) & (RxEndpoint.capacity - 1)] }
        head = (head + n) & (RxEndpoint.capacity - 1)
        vdv_store_release_u32(pendingCount, pendingCount.pointee - UInt32(n))
        return n
    }

    /// The receiver is about to sleep: a sender that adds a frame after this rings the doorbell.
    /// Returns whether frames are already waiting.
    func armAndCheck() -> Bool {
        vdv_store_relaxed_u8(armed, 1)
        vdv_fence_seq_cst()
        return count > 0
    }

    func disarm() { vdv_store_relaxed_u8(armed, 0) }

    /// Sender side, after its frames are in (and the lock released): wake the receiver if it sleeps.
    @inline(__always)
    func wakeIfArmed() {
        vdv_fence_seq_cst()
        if vdv_load_relaxed_u8(armed) != 0 && vdv_exchange_u8(armed, 0) != 0 { doorbell.signal() }
    }
}
