#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Virtio

/// A transmit queue (virtio 1.3, 5.1.6.2): each chain is one frame, checked, then handed to the switch by
/// reference. A chain goes back to the guest once every receiver has copied it; chains go back in order.
final class NetTxQueue: QueueHandler {
    let binding: QueueBinding
    /// Strong lets, not unowned(unsafe): a let of a class instance is borrowed for a call without reference
    /// counting, while an unowned(unsafe) one was retained around every call (measured: a third of a 64-byte frame).
    let vq: SplitVirtqueue
    let port: SwitchPort
    let sw: NetSwitch
    let headerSize: Int
    let features: UInt64
    let maxFrame: Int
    /// Largest frame without GSO now: the guest's MTU (read once per pass: the frontend may lower it) plus the
    /// Ethernet header and one VLAN tag.
    private var mtuFrame: Int
    let linkMTU: LinkMTU
    let counters: PortCounters
    var stats: QueueStats { binding.stats }

    private let table: NetFrameTable
    /// table.frames, kept here so the per-frame path does not touch (and reference-count) the table object.
    private let frames: UnsafeMutablePointer<NetFrame>
    /// Heads whose frame is in the switch (a guest offering one again is breaking the ring).
    private let busy: UnsafeMutablePointer<Bool>
    /// Heads in the order they were taken; completed from the front.
    private let order: UnsafeMutablePointer<UInt16>
    private var orderStart = 0
    private var orderCount = 0
    /// One pass's chains, read before any is checked (see process()).
    private let burst: UnsafeMutablePointer<ChainSegments>
    private let heads: UnsafeMutablePointer<UInt16>
    private let batch: UnsafeMutablePointer<NetFrameRef>
    private let scratch = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 8)
    private let wake = WakeList()
    /// Bytes of the frames in this pass's batch (counted once per batch: the counters are shared atomics).
    private var batchBytes = 0
    static let batchSize = 32

    /// Largest frame without segmentation offload: MTU plus Ethernet header and one VLAN tag.
    static func maxFrame(mtu: Int, features: UInt64) -> Int {
        let gso = NetFeature.hostTSO4 | NetFeature.hostTSO6 | NetFeature.hostUFO
        return features & gso != 0 ? 65535 + 14 + 4 : mtu + 14 + 4
    }

    init(binding: QueueBinding, port: SwitchPort, sw: NetSwitch, features: UInt64, mtu: LinkMTU) {
        self.binding = binding
        vq = binding.vq
        self.port = port
        self.sw = sw
        self.features = features
        headerSize = NetHeader.size(features: features)
        maxFrame = NetTxQueue.maxFrame(mtu: mtu.ceiling, features: features)
        linkMTU = mtu
        mtuFrame = mtu.value + 14 + 4
        counters = port.counters
        let n = Int(binding.vq.size)
        table = NetFrameTable(count: n)
        frames = table.frames
        busy = .allocate(capacity: n)
        busy.initialize(repeating: false, count: n)
        order = .allocate(capacity: n)
        batch = .allocate(capacity: NetTxQueue.batchSize)
        heads = .allocate(capacity: NetTxQueue.batchSize)
        burst = .allocate(capacity: NetTxQueue.batchSize)
        for i in 0..<NetTxQueue.batchSize { (burst + i).initialize(to: ChainSegments(capacity: NetFrame.maxSegments + 1)) }
    }

    deinit {
        busy.deallocate()
        order.deallocate()
        batch.deallocate()
        scratch.deallocate()
        for i in 0..<NetTxQueue.batchSize { burst[i].deallocate() }
        burst.deinitialize(count: NetTxQueue.batchSize)
        burst.deallocate()
        heads.deallocate()
    }

    /// Frames receivers still hold. Asked by the poller while the queue stops (also after the guest broke it, when
    /// process() no longer runs): chains they let go of are given back here first, so the stop waits only for them.
    var inflight: Int {
        _ = retire()
        return orderCount
    }

    /// A pass works in three steps over a burst of up to `batchSize` chains, so that the cache misses on lines
    /// the driver's CPU wrote overlap instead of coming one after another: take the heads (one read of avail->idx)
    /// and prefetch their descriptors; read the chains and prefetch each frame's first bytes; check the frames.
    func process() throws -> Bool {
        var did = retire()
        let size = Int(vq.size)
        mtuFrame = linkMTU.value + 14 + 4
        var taken = 0, read = 0
        var broken: Error?
        // The guest may break the ring at any step: frames before the bad head or chain still go out.
        do {
            while taken < NetTxQueue.batchSize, let head = try vq.popHead() {
                guard !busy[Int(head)] else { throw NetError.headInFlight(head) }
                // From here the head is ours: retire() gives it back once no receiver holds its frame.
                busy[Int(head)] = true
                order[(orderStart + orderCount) % size] = head
                orderCount += 1
                heads[taken] = head
                taken += 1
                vq.prefetchDescriptor(head: head)
            }
        } catch {
            broken = error
        }
        do {
            while read < taken {
                try vq.readChain(head: heads[read], into: &burst[read])
                if burst[read].count > 0 { vdv_prefetch(burst[read].iov[0].iov_base) }
                read += 1
            }
        } catch {
            broken = broken ?? error
        }
        var n = 0
        for i in 0..<read {
            let f = frames + Int(heads[i])
            if parse(f, burst + i) {
                f.holdBySender()
                batch[n] = f
                n += 1
            }
        }
        if taken > 0 { did = true }
        if n > 0 {
            counters.add(.txFrames, UInt64(n))
            counters.add(.txBytes, UInt64(batchBytes))
            batchBytes = 0
            sw.forward(batch, count: n, from: port, now: monotonicMicros(), wake: wake)
            for i in 0..<n { batch[i].releaseFrame() }
            wake.ring()
        }
        if let broken { throw broken }
        if retire() { did = true }
        return did
    }

    /// Gives back, in order, the chains no receiver holds any more.
    private func retire() -> Bool {
        let size = Int(binding.vq.size)
        var did = false
        while orderCount > 0 {
            let head = order[orderStart]
            guard !(frames + Int(head)).frameInUse else { break }
            busy[Int(head)] = false
            binding.complete(head: head, length: 0)
            orderStart = (orderStart + 1) % size
            orderCount -= 1
            did = true
        }
        return did
    }

    /// Checks the chain in `segs` and describes its frame in f; false (counted) if it is dropped.
    @inline(__always)
    private func parse(_ f: NetFrameRef, _ chain: UnsafeMutablePointer<ChainSegments>) -> Bool {
        let segs = chain.pointee
        // 5.1.6.2: a transmit chain is device-readable only: header, then the frame.
        guard segs.writableCount == 0, segs.readableBytes >= UInt64(headerSize) else {
            counters.add(.dropBadHeader)
            return false
        }
        let length = Int(segs.readableBytes) - headerSize
        guard length >= 14 else {
            counters.add(.dropRunt)
            return false
        }
        guard length <= maxFrame else {
            counters.add(.dropOversized)
            return false
        }
        // Header and Ethernet addresses straight from the first buffer when it holds them (the usual layout),
        // else gathered into scratch.
        let peek = min(length, 38)
        let first = segs.iov[0]
        let base: UnsafeRawPointer
        if first.iov_len >= headerSize + peek {
            base = UnsafeRawPointer(first.iov_base!)
        } else {
            guard segs.copyReadable(offset: 0, into: scratch, length: headerSize + peek) else {
                counters.add(.dropBadHeader)
                return false
            }
            base = UnsafeRawPointer(scratch)
        }
        var h = NetHeader(from: base, size: headerSize)
        h.numBuffers = 0
        guard validate(h, length: length) else {
            counters.add(.dropBadHeader)
            return false
        }
        // Ethernet header and, for IPv4, the addresses and ports that pick the receiver's queue.
        guard let k = segs.slice(writable: false, offset: headerSize, length: length, into: f.pointee.iov,
                                 outCapacity: NetFrame.maxSegments) else {
            counters.add(.dropBadHeader)
            return false
        }
        let eth = base + headerSize
        let dst = MACAddress(at: eth), src = MACAddress(at: eth + 6)
        let etherType = UInt16(eth.load(fromByteOffset: 12, as: UInt8.self)) << 8 | UInt16(eth.load(fromByteOffset: 13, as: UInt8.self))
        // Without GSO a frame is at most the MTU plus Ethernet header and one 802.1Q tag's room (as the bench
        // and most switches count it, tagged or not).
        guard h.gsoType != NetHeader.gsoNone || length <= mtuFrame else {
            counters.add(.dropOversized)
            return false
        }
        if src.isMulticast || src.value == 0 {
            counters.add(.dropBadSource)
            return false
        }
        if let fixed = port.fixedMAC, fixed != src {
            counters.add(.dropSpoofed)
            return false
        }
        // An access port carries untagged frames only: a tag from the guest could reach another VLAN's segment.
        if port.vlan != 0 && (etherType == 0x8100 || etherType == 0x88a8) {
            counters.add(.dropTagged)
            return false
        }
        var hash = UInt32(truncatingIfNeeded: dst.value ^ src.value ^ (dst.value >> 32) ^ (src.value >> 32))
        if etherType == 0x0800 && peek >= 38 {
            hash ^= eth.loadUnaligned(fromByteOffset: 26, as: UInt32.self) ^ eth.loadUnaligned(fromByteOffset: 30, as: UInt32.self)
            hash ^= eth.loadUnaligned(fromByteOffset: 34, as: UInt32.self)
        }
        f.pointee.iovCount = k
        f.pointee.length = length
        f.pointee.header = h
        f.pointee.dst = dst
        f.pointee.src = src
        // Mixed so every input bit reaches the low bits that pick the queue.
        hash ^= hash >> 16
        hash = hash &* 0x45d9_f3b
        hash ^= hash >> 16
        f.pointee.flowHash = hash
        batchBytes += length
        return true
    }

    /// 5.1.6.2.1: only NEEDS_CSUM from a driver, inside the frame; GSO only as negotiated.
    private func validate(_ h: NetHeader, length: Int) -> Bool {
        guard h.flags & ~NetHeader.needsCsum == 0 else { return false }
        if h.flags & NetHeader.needsCsum != 0 {
            guard features & NetFeature.csum != 0,
                  Int(h.csumStart) + Int(h.csumOffset) + 2 <= length else { return false }
        }
        let gso = h.gsoType & ~NetHeader.gsoECN
        switch gso {
        case NetHeader.gsoNone:
            return h.gsoType & NetHeader.gsoECN == 0
        case NetHeader.gsoTCPv4:
            guard features & NetFeature.hostTSO4 != 0 else { return false }
        case NetHeader.gsoTCPv6:
            guard features & NetFeature.hostTSO6 != 0 else { return false }
        case NetHeader.gsoUDP:
            guard features & NetFeature.hostUFO != 0 else { return false }
        default:
            return false
        }
        if h.gsoType & NetHeader.gsoECN != 0 && features & NetFeature.hostECN == 0 { return false }
        // A segmented frame carries a partial checksum and a segment size.
        return h.flags & NetHeader.needsCsum != 0 && h.gsoSize > 0
    }

    func complete(tag: UInt32, result: Int32) {}

    /// New chains, or frames still in the switch (receivers on other pollers release them without waking us).
    func hasPendingWork() -> Bool {
        orderCount > 0 || ((try? binding.vq.pendingCount()) ?? 0) > 0
    }
}
