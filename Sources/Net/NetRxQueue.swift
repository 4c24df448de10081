#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Virtio

/// A receive queue (virtio 1.3, 5.1.6.3): frames the switch left in this queue's endpoint are copied straight
/// from the sender's memory into the guest's rx buffers, spread over several buffers with MRG_RXBUF
/// (num_buffers set, 5.1.6.3.1). A frame with no buffer for it is dropped and counted, never waited for.
final class NetRxQueue: QueueHandler, FDWatcher {
    let binding: QueueBinding
    /// Strong lets (see NetTxQueue): borrowed for calls, no reference counting per frame.
    let vq: SplitVirtqueue
    let endpoint: RxEndpoint
    let port: SwitchPort
    let sw: NetSwitch
    let poller: Poller
    let headerSize: Int
    let mergeable: Bool
    let guestCsum: Bool
    let guestTSO4: Bool
    let guestTSO6: Bool
    let guestUFO: Bool
    private let segmenter = TCPSegmenter()
    private let fragmenter = UDPFragmenter()
    let counters: PortCounters
    var stats: QueueStats { binding.stats }
    var inflight: Int { 0 }

    /// Most buffers one frame may take with MRG_RXBUF (64 KiB frames into 1.5 KiB buffers need 44).
    static let maxChains = 64
    static let batchSize = 64
    private let chains: UnsafeMutablePointer<ChainSegments>
    private let heads: UnsafeMutablePointer<UInt16>
    private let taken: UnsafeMutablePointer<NetFrameRef>
    private let hdr = UnsafeMutableRawPointer.allocate(byteCount: NetHeader.size, alignment: 8)
    private var watchToken: UInt64?
    /// Frames and bytes delivered in this pass (added to the shared counters once per pass).
    private var deliveredFrames = 0
    private var deliveredBytes = 0

    init(context: QueueContext, port: SwitchPort, sw: NetSwitch, features: UInt64) throws {
        binding = context.binding
        vq = context.binding.vq
        poller = context.poller
        self.port = port
        self.sw = sw
        headerSize = NetHeader.size(features: features)
        mergeable = features & NetFeature.mrgRxbuf != 0
        guestCsum = features & NetFeature.guestCsum != 0
        guestTSO4 = guestCsum && features & NetFeature.guestTSO4 != 0
        guestTSO6 = guestCsum && features & NetFeature.guestTSO6 != 0
        guestUFO = guestCsum && features & NetFeature.guestUFO != 0
        counters = port.counters
        endpoint = try RxEndpoint()
        chains = .allocate(capacity: NetRxQueue.maxChains)
        for i in 0..<NetRxQueue.maxChains { (chains + i).initialize(to: ChainSegments(capacity: 64)) }
        heads = .allocate(capacity: NetRxQueue.maxChains)
        taken = .allocate(capacity: NetRxQueue.batchSize)
        // Called on the poller thread (makeQueueHandler): the doorbell joins this poller's epoll.
        watchToken = try poller.watch(fd: endpoint.doorbell.fd, events: UInt32(VDV_EPOLLIN), self)
        try sw.addEndpoint(endpoint, to: port)
    }

    deinit {
        for i in 0..<NetRxQueue.maxChains { chains[i].deallocate() }
        chains.deinitialize(count: NetRxQueue.maxChains)
        chains.deallocate()
        heads.deallocate()
        taken.deallocate()
        hdr.deallocate()
    }

    func fdReady(events: UInt32) { endpoint.doorbell.drain() }

    func complete(tag: UInt32, result: Int32) {}

    func process() throws -> Bool {
        endpoint.disarm()
        let n = sw.take(endpoint, into: taken, max: NetRxQueue.batchSize)
        // One buffer per frame at least: their descriptors load while the first frames are copied.
        if n > 0 { vq.prefetchAvailable(n) }
        // Frames are let go of after the whole batch: a release is an atomic read-modify-write, which waits for
        // this thread's earlier stores (the copies into the guest's buffers, lines its driver's CPU owns) to
        // drain; once per batch instead of once per frame (measured: a quarter of a 64-byte frame's time).
        defer { for i in 0..<n { taken[i].releaseFrame() } }
        do {
            for i in 0..<n { try deliverOrSegment(taken[i]) }
        } catch {
            // This guest broke its rx ring: its queue stops, and nothing it was sent may hold up the senders.
            stopReceiving()
            countDelivered()
            throw error
        }
        countDelivered()
        return n > 0
    }

    private func countDelivered() {
        guard deliveredFrames > 0 else { return }
        counters.add(.rxFrames, UInt64(deliveredFrames))
        counters.add(.rxBytes, UInt64(deliveredBytes))
        deliveredFrames = 0
        deliveredBytes = 0
    }

    /// A GSO frame goes as it is to a driver that takes it (5.1.6.4: GUEST_TSO4/6, GUEST_UFO), cut into MSS-sized
    /// TCP segments or IP fragments for one that does not.
    @inline(__always)
    private func deliverOrSegment(_ f: NetFrameRef) throws {
        let gso = f.pointee.header.gsoType & ~NetHeader.gsoECN
        if gso == NetHeader.gsoNone || (gso == NetHeader.gsoTCPv4 && guestTSO4) || (gso == NetHeader.gsoTCPv6 && guestTSO6)
            || (gso == NetHeader.gsoUDP && guestUFO) {
            return try deliver(f)
        }
        counters.add(.segmented)
        let done = gso == NetHeader.gsoUDP ? try fragmenter.fragment(f, { try deliver($0) })
                                           : try segmenter.segment(f, { try deliver($0) })
        if !done { counters.add(.dropUnsegmentable) }
    }

    /// Copies one frame into as many rx buffers as it needs (one without MRG_RXBUF).
    @inline(__always)
    private func deliver(_ f: NetFrameRef) throws {
        let total = headerSize + f.pointee.length
        var got = 0, room = 0
        while room < total && got < NetRxQueue.maxChains {
            guard let head = try vq.popHead() else { break }
            try vq.readChain(head: head, into: &chains[got])
            guard chains[got].readableCount == 0 else { throw NetError.rxChainReadable }
            heads[got] = head
            room += Int(chains[got].writableBytes)
            got += 1
            if !mergeable { break }
        }
        guard room >= total, got > 0, Int(chains[0].writableBytes) >= headerSize || mergeable else {
            for _ in 0..<got { vq.unpop() }
            counters.add(got == 0 || mergeable ? .dropNoRxBuffers : .dropRxTooSmall)
            return
        }
        var h = NetHeader()
        h.numBuffers = mergeable ? UInt16(got) : 1
        let sh = f.pointee.header
        let needsCsum = sh.flags & NetHeader.needsCsum != 0
        if needsCsum && guestCsum {
            // 5.1.6.4: the partial checksum goes to the driver as it came, to be completed there (or not at all).
            h.flags = NetHeader.needsCsum
            h.csumStart = sh.csumStart
            h.csumOffset = sh.csumOffset
            // Only frames this receiver may take reach here with GSO (deliverOrSegment): the header goes as it came.
            h.gsoType = sh.gsoType
            h.gsoSize = sh.gsoSize
            h.hdrLen = sh.hdrLen
        }
        // The one copy: sender's buffers to this guest's buffers. The usual case, one sender buffer into one
        // receive buffer that holds header and frame, is two plain stores; anything else walks the segments.
        let first = chains[0].iov[0]
        if got == 1 && f.pointee.iovCount == 1 && first.iov_len >= total {
            h.write(to: first.iov_base!, size: headerSize)
            memcpy(first.iov_base! + headerSize, f.pointee.iov[0].iov_base!, f.pointee.length)
        } else {
            h.write(to: hdr, size: headerSize)
            _ = write(hdr, count: headerSize, at: 0, chains: got)
            var at = headerSize
            for s in 0..<f.pointee.iovCount {
                let seg = f.pointee.iov[s]
                at += write(UnsafeRawPointer(seg.iov_base!), count: seg.iov_len, at: at, chains: got)
            }
        }
        if needsCsum && !guestCsum {
            // The receiver cannot complete it: compute it here over the sender's bytes, store it in the copy.
            var c = InternetChecksum()
            c.add(frame: f, from: Int(sh.csumStart))
            var v = c.result.bigEndian
            _ = write(&v, count: 2, at: headerSize + Int(sh.csumStart) + Int(sh.csumOffset), chains: got)
        }
        var left = total
        for i in 0..<got {
            let n = min(left, Int(chains[i].writableBytes))
            binding.complete(head: heads[i], length: UInt32(n))
            // Live migration: the bytes written into this guest are marked dirty (nothing when not logging).
            binding.logWritten(chains[i], bytes: n)
            left -= n
        }
        deliveredFrames += 1
        deliveredBytes += f.pointee.length
    }

    /// Writes bytes at an offset of the writable space of the first `count` chains taken; returns bytes written.
    @inline(__always)
    private func write(_ src: UnsafeRawPointer, count: Int, at offset: Int, chains n: Int) -> Int {
        var skip = offset, done = 0, i = 0
        while i < n && done < count {
            let room = Int(chains[i].writableBytes)
            if skip >= room { skip -= room } else {
                let k = chains[i].copyToWritable(offset: skip, from: src + done, length: min(room - skip, count - done))
                done += k
                skip = 0
            }
            i += 1
        }
        return done
    }

    /// Frames waiting, or senders told to wake us when one comes (checked after notifications are armed).
    func hasPendingWork() -> Bool { endpoint.armAndCheck() }

    private func stopReceiving() {
        sw.removeEndpoint(endpoint)
        if let t = watchToken { poller.unwatch(fd: endpoint.doorbell.fd, token: t) }
        watchToken = nil
    }

    func detached() { stopReceiving() }
}
