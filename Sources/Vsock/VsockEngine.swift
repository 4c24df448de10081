#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Virtio

/// The device's live state while its queues run: connections, host sockets, packets waiting for rx buffers.
/// Everything here happens on the one poller that owns all three queues (no locks). The work is spread over
/// extensions, one concern a file: VsockPacketDispatch (guest packets), VsockConnectionLifecycle (states),
/// VsockGuestToHost, VsockRxScheduler (everything into rx buffers), VsockCredit, VsockSeqpacket,
/// VsockHostListener (uds-path and CONNECT), VsockSiblingRelay, VsockConnectionTimer (credit retries, stalls).
final class VsockEngine: FDWatcher {
    // The device owns its engine and outlives it; unowned(unsafe) keeps reference counting off the packet path.
    unowned(unsafe) let device: VsockDevice
    let poller: Poller
    let guestCID: UInt64
    let bufAlloc: UInt32
    var rx: QueueBinding?
    var tx: QueueBinding?
    var event: QueueBinding?
    var attached = Set<Int>()
    var connections: [VsockConnKey: VsockConnection] = [:]
    /// Packets for the guest that wait for an rx buffer: control packets and data relayed from siblings.
    /// (header, payload, bytes of the payload already sent): a payload larger than an rx buffer goes in parts.
    var pending: [(VsockHeader, [UInt8], Int)] = []
    var pendingStart = 0
    /// Payload bytes waiting in `pending` (relayed sibling data), capped so a guest cannot grow it without bound.
    var pendingBytes = 0
    var stalled: [VsockConnection] = []
    /// Connections whose freed buffer space the guest should hear of (VsockCredit).
    var creditDue: [VsockConnection] = []
    var listenerToken: UInt64?
    /// Out of fds: the listener left epoll until a connection closes.
    var listenerPaused = false
    var timer: VsockConnectionTimer?
    /// Caps hit and not yet left (VsockHostConnectionLimits), and host socket paths refused (VsockHostSocket):
    /// each is logged once when it is reached.
    var capsHit = Set<String>()
    var resetEventDue: Bool
    var failure: Error?
    var nextHostPort: UInt32 = 1 << 30
    var rxSegs = ChainSegments(capacity: 64)
    var txSegs = ChainSegments(capacity: 64)
    let iov = UnsafeMutablePointer<iovec>.allocate(capacity: 64)
    static let batchChains = 32
    var batchHeads = [UInt16](repeating: 0, count: VsockEngine.batchChains)
    var batchHeaders = [UnsafeMutableRawPointer](repeating: UnsafeMutableRawPointer(bitPattern: 1)!, count: VsockEngine.batchChains)
    var batchRoom = [Int](repeating: 0, count: VsockEngine.batchChains)
    let hdr = UnsafeMutableRawPointer.allocate(byteCount: VsockLayout.headerSize, alignment: 8)

    init(device: VsockDevice, poller: Poller, resetEventDue: Bool) {
        self.device = device
        self.poller = poller
        guestCID = device.options.guestCID
        bufAlloc = device.options.txBufferSize
        self.resetEventDue = resetEventDue
    }

    deinit {
        rxSegs.deallocate()
        txSegs.deallocate()
        iov.deallocate()
        hdr.deallocate()
    }

    func attach(_ index: Int, _ binding: QueueBinding) {
        attached.insert(index)
        switch index {
        case VsockLayout.rxQueue: rx = binding
        case VsockLayout.txQueue: tx = binding
        default: event = binding
        }
        // Host connections are taken once the guest can answer them (rx and tx both running).
        if listenerToken == nil && rx != nil && tx != nil {
            listenerToken = try? poller.watch(fd: device.listenFD, events: UInt32(VDV_EPOLLIN), self)
            if timer == nil {
                timer = VsockConnectionTimer(engine: self, stallTimeoutMs: device.options.stallTimeoutMs)
                timer?.start(on: poller)
            }
        }
    }

    /// Last queue gone: every connection is closed on the host side too.
    func detach(_ index: Int) {
        attached.remove(index)
        switch index {
        case VsockLayout.rxQueue: rx = nil
        case VsockLayout.txQueue: tx = nil
        default: event = nil
        }
        guard attached.isEmpty else { return }
        for c in Array(connections.values) { close(c) }
        if let t = listenerToken { poller.unwatch(fd: device.listenFD, token: t) }
        listenerToken = nil
        listenerPaused = false
        timer?.stop(on: poller)
        timer = nil
        pending.removeAll()
        stalled.removeAll()
        creditDue.removeAll()
        pendingStart = 0
        pendingBytes = 0
    }

    func fail(_ e: Error) {
        guard failure == nil else { return }
        failure = e
        for c in Array(connections.values) { close(c) }
        (rx ?? tx ?? event)?.onError(e)
    }

    func processTx() throws -> Bool {
        if let failure { throw failure }
        guard let tx else { return false }
        var did = false
        var n = 0
        while n < 256, let head = try tx.vq.popHead() {
            try tx.vq.readChain(head: head, into: &txSegs)
            handleGuestPacket()
            tx.complete(head: head, length: 0)
            n += 1
            did = true
        }
        sendCreditUpdates()
        if fillRx() { did = true }
        return did
    }

    func processRx() throws -> Bool {
        if let failure { throw failure }
        let told = sendCreditUpdates()
        return fillRx() || told
    }

    func processEvent() throws -> Bool {
        if let failure { throw failure }
        guard resetEventDue, let event else { return false }
        // virtio 1.3, 5.10.6.6: the device tells the driver all connections are gone.
        guard let head = try event.vq.popHead() else { return false }
        try event.vq.readChain(head: head, into: &rxSegs)
        var id = VsockLayout.eventTransportReset.littleEndian
        let n = withUnsafeBytes(of: &id) { rxSegs.copyToWritable(offset: 0, from: $0.baseAddress!, length: 4) }
        event.logWritten(rxSegs, bytes: n)
        event.complete(head: head, length: UInt32(n))
        resetEventDue = false
        device.log("TRANSPORT_RESET sent to the guest")
        return true
    }

    /// Packets or stalled connections wait, and the guest has given rx buffers for them.
    var rxWorkPending: Bool {
        guard pendingStart < pending.count || !stalled.isEmpty, let rx else { return false }
        return ((try? rx.vq.pendingCount()) ?? 0) > 0
    }

    func close(_ c: VsockConnection) {
        guard connections[c.key] === c else { return }
        connections[c.key] = nil
        if c.token != 0 { poller.unwatch(fd: c.fd, token: c.token) }
        closeFD(c.fd)
        c.engine = nil
        resumeListener()
    }

}
