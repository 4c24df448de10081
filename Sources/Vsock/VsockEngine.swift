#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Virtio

/// The device's live state while its queues run: connections, host sockets, packets waiting for rx buffers.
/// Everything here happens on the one poller that owns all three queues (no locks).
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
    var listenerToken: UInt64?
    var timer: VsockConnectionTimer?
    var resetEventDue: Bool
    var failure: Error?
    var nextHostPort: UInt32 = 1 << 30
    private var rxSegs = ChainSegments(capacity: 64)
    private var txSegs = ChainSegments(capacity: 64)
    private let iov = UnsafeMutablePointer<iovec>.allocate(capacity: 64)
    static let batchChains = 32
    private var batchHeads = [UInt16](repeating: 0, count: VsockEngine.batchChains)
    private var batchHeaders = [UnsafeMutableRawPointer](repeating: UnsafeMutableRawPointer(bitPattern: 1)!, count: VsockEngine.batchChains)
    private var batchRoom = [Int](repeating: 0, count: VsockEngine.batchChains)
    private let hdr = UnsafeMutableRawPointer.allocate(byteCount: VsockLayout.headerSize, alignment: 8)

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
        pendingStart = 0
        pendingBytes = 0
    }

    private func fail(_ e: Error) {
        guard failure == nil else { return }
        failure = e
        for c in Array(connections.values) { close(c) }
        (rx ?? tx ?? event)?.onError(e)
    }

    // MARK: queue entry points (poller thread)

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
        if flushToGuest() { did = true }
        return did
    }

    func processRx() throws -> Bool {
        if let failure { throw failure }
        var did = flushToGuest()
        // New rx buffers: connections that stopped for lack of them may read again.
        if !stalled.isEmpty, let rx, (try? rx.vq.pendingCount()) ?? 0 > 0 {
            let s = stalled
            stalled.removeAll()
            for c in s where connections[c.key] === c {
                c.pausedForRx = false
                updateWatch(c)
                pumpHostToGuest(c)
            }
            did = true
        }
        return did
    }

    func processEvent() throws -> Bool {
        if let failure { throw failure }
        guard resetEventDue, let event else { return false }
        // virtio 1.3, 5.10.6.6: the device tells the driver all connections are gone.
        guard let head = try event.vq.popHead() else { return false }
        try event.vq.readChain(head: head, into: &rxSegs)
        var id = VsockLayout.eventTransportReset.littleEndian
        let n = withUnsafeBytes(of: &id) { rxSegs.copyToWritable(offset: 0, from: $0.baseAddress!, length: 4) }
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

    // MARK: guest -> device packets

    private func handleGuestPacket() {
        let stats = tx!.stats
        stats.add(.requests)
        guard txSegs.readableBytes >= UInt64(VsockLayout.headerSize),
              txSegs.copyReadable(offset: 0, into: hdr, length: VsockLayout.headerSize) else {
            stats.add(.errors)   // no header: nothing to answer
            return
        }
        let h = VsockHeader(from: hdr)
        let payload = txSegs.readableBytes - UInt64(VsockLayout.headerSize)
        // The guest cannot speak for another CID, claim more payload than it gave, or invent types.
        guard h.srcCID == guestCID, UInt64(h.len) <= payload, let type = VsockType(rawValue: h.type),
              let op = VsockOp(rawValue: h.op), op != .invalid else {
            stats.add(.errors)
            if h.srcCID == guestCID && h.op != VsockOp.rst.rawValue { refuse(h) }
            return
        }
        if type == .seqpacket && device.ackedFeatures & VsockFeature.seqpacket == 0 {
            stats.add(.errors)
            if op != .rst { refuse(h) }
            return
        }
        if h.dstCID != VsockLayout.hostCID {
            relayToSibling(h)
            return
        }
        let key = VsockConnKey(guestPort: h.srcPort, peerCID: VsockLayout.hostCID, peerPort: h.dstPort)
        let conn = connections[key]
        if op != .rw { device.trace("guest \(op) \(h.srcPort)->\(h.dstPort) flags=\(h.flags) conn=\(conn != nil)") }
        if let conn {
            conn.peerBufAlloc = h.bufAlloc
            conn.peerFwdCnt = h.fwdCnt
            if conn.pausedForCredit && conn.peerCredit > 0 {
                conn.pausedForCredit = false
                updateWatch(conn)
                pumpHostToGuest(conn)
            }
        }
        switch op {
        case .request:
            if conn != nil { refuse(h); return }
            connectToHost(h, type: type)
        case .response:
            guard let conn, conn.state == .connecting else { refuse(h); return }
            conn.state = .established
            let ok = Array("OK \(conn.key.peerPort)\n".utf8)
            _ = ok.withUnsafeBytes { Glibc.write(conn.fd, $0.baseAddress, $0.count) }
            updateWatch(conn)
            pumpHostToGuest(conn)
        case .rw:
            guard let conn, conn.state == .established, !conn.guestShutSend else { refuse(h); return }
            guestData(conn, h)
        case .creditUpdate:
            guard conn != nil else { queueReset(for: h); return }
        case .creditRequest:
            guard let conn else { queueReset(for: h); return }
            queueControl(conn, .creditUpdate)
        case .shutdown:
            guard let conn else { queueReset(for: h); return }
            if h.flags & VsockLayout.shutdownSend != 0 { conn.guestShutSend = true }
            if h.flags & VsockLayout.shutdownRcv != 0 {
                conn.guestShutRcv = true
                Glibc.shutdown(conn.fd, Int32(SHUT_RD))
            }
            updateWatch(conn)
            finishShutdowns(conn)
        case .rst:
            if let conn { close(conn) }
        case .invalid:
            break
        }
    }

    private func connectToHost(_ h: VsockHeader, type: VsockType) {
        guard connections.count < VsockOptions.maxConnections else {
            device.log("connection limit \(VsockOptions.maxConnections) reached; refusing guest port \(h.srcPort)")
            queueReset(for: h)
            return
        }
        let path = "\(device.options.udsPath)_\(h.dstPort)"
        let fd = vdv_unix_connect_nb(path, type == .seqpacket ? Int32(SOCK_SEQPACKET.rawValue) : Int32(SOCK_STREAM.rawValue))
        guard fd >= 0 else {
            // Nothing listens for that port: the guest gets RST (its connect fails with ECONNRESET).
            queueReset(for: h)
            return
        }
        let key = VsockConnKey(guestPort: h.srcPort, peerCID: VsockLayout.hostCID, peerPort: h.dstPort)
        let c = VsockConnection(key: key, type: type, fd: fd, state: .established)
        c.peerBufAlloc = h.bufAlloc
        c.peerFwdCnt = h.fwdCnt
        guard register(c) else { return }
        queueControl(c, .response)
    }

    private func register(_ c: VsockConnection) -> Bool {
        c.engine = self
        c.bufAlloc = bufAlloc
        if c.type == .seqpacket {
            // A message the host socket cannot send whole must be refused by the guest (EMSGSIZE), not reset.
            c.bufAlloc = min(bufAlloc, UInt32(max(0, vdv_seqpacket_max_message(c.fd, Int32(clamping: bufAlloc)))))
        }
        do {
            c.watched = c.state == .connecting ? 0 : UInt32(VDV_EPOLLIN | VDV_EPOLLRDHUP)
            if c.watched != 0 { c.token = try poller.watch(fd: c.fd, events: c.watched, c) }
        } catch {
            closeFD(c.fd)
            return false
        }
        connections[c.key] = c
        timer?.arm(true)
        return true
    }

    /// RW from the guest: written straight from guest memory to the host socket; what the socket will not
    /// take now is kept (never more than our buf_alloc, which the guest's credit already respects).
    private func guestData(_ c: VsockConnection, _ h: VsockHeader) {
        let len = Int(h.len)
        tx!.stats.add(.writtenBytes, UInt64(len))
        c.rxCnt &+= UInt32(truncatingIfNeeded: len)
        if c.type == .seqpacket {
            guard c.seqIn.count + len <= VsockOptions.maxSeqpacketMessage,
                  c.unsentBytes + c.seqIn.count + len <= Int(c.bufAlloc) else { return violation(c, "seqpacket over credit") }
            appendPayload(&c.seqIn, len)
            if h.flags & VsockLayout.seqEOM != 0 {
                c.seqOut.append(c.seqIn)
                c.seqIn = []
                flushHost(c)
            }
            return
        }
        guard len > 0 else { return }
        guard c.unsentBytes + len <= Int(c.bufAlloc) else { return violation(c, "guest sent past its credit") }
        var written = 0
        if c.unsentBytes == 0, let n = txSegs.slice(writable: false, offset: VsockLayout.headerSize, length: len, into: iov, outCapacity: 64) {
            let r = Glibc.writev(c.fd, iov, Int32(n))
            if r > 0 { written = r }
            else if r < 0 && errno != EAGAIN && errno != EWOULDBLOCK { return hostGone(c) }
        }
        c.fwdCnt &+= UInt32(written)
        if written < len {
            if c.outStart > 0 && c.outStart * 2 > c.outBuf.count {
                c.outBuf.removeFirst(c.outStart)
                c.outStart = 0
            }
            let old = c.outBuf.count
            c.outBuf.append(contentsOf: repeatElement(0, count: len - written))
            c.outBuf.withUnsafeMutableBytes {
                _ = txSegs.copyReadable(offset: VsockLayout.headerSize + written, into: $0.baseAddress! + old, length: len - written)
            }
            updateWatch(c)
        }
        maybeCreditUpdate(c)
    }

    private func appendPayload(_ buf: inout [UInt8], _ len: Int) {
        let old = buf.count
        buf.append(contentsOf: repeatElement(0, count: len))
        buf.withUnsafeMutableBytes {
            _ = txSegs.copyReadable(offset: VsockLayout.headerSize, into: $0.baseAddress! + old, length: len)
        }
    }

    /// Writes kept guest data to the host socket; true once nothing is left.
    @discardableResult
    private func flushHost(_ c: VsockConnection) -> Bool {
        while c.outStart < c.outBuf.count {
            let r = c.outBuf.withUnsafeBytes { Glibc.write(c.fd, $0.baseAddress! + c.outStart, $0.count - c.outStart) }
            if r < 0 {
                if errno == EAGAIN || errno == EWOULDBLOCK { break }
                hostGone(c)
                return false
            }
            c.outStart += r
            c.fwdCnt &+= UInt32(r)
        }
        if c.outStart == c.outBuf.count {
            c.outBuf.removeAll(keepingCapacity: false)
            c.outStart = 0
        }
        while let m = c.seqOut.first {
            let r = m.withUnsafeBytes { Glibc.send(c.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if r < 0 {
                if errno == EAGAIN || errno == EWOULDBLOCK { break }
                hostGone(c)
                return false
            }
            c.fwdCnt &+= UInt32(m.count)
            c.seqOut.removeFirst()
        }
        updateWatch(c)
        maybeCreditUpdate(c)
        let empty = c.unsentBytes == 0
        if empty { finishShutdowns(c) }
        return empty
    }

    /// Tell the guest about freed buffer space before it runs out of credit (5.10.6.3).
    private func maybeCreditUpdate(_ c: VsockConnection) {
        if c.fwdCnt &- c.advertisedFwdCnt >= max(1, c.bufAlloc / 4) { queueControl(c, .creditUpdate) }
    }

    private func finishShutdowns(_ c: VsockConnection) {
        guard connections[c.key] === c, c.unsentBytes == 0 else { return }
        if c.guestShutSend && !c.hostShutWrDone {
            Glibc.shutdown(c.fd, Int32(SHUT_WR))
            c.hostShutWrDone = true
        }
        // Both directions closed by the guest: answer RST and forget the connection (5.10.6.5).
        if c.guestShutSend && c.guestShutRcv {
            queueControl(c, .rst)
            close(c)
        }
    }

    private func violation(_ c: VsockConnection, _ why: String) {
        device.log("guest port \(c.key.guestPort): \(why); connection reset")
        tx?.stats.add(.errors)
        queueControl(c, .rst)
        close(c)
    }

    private func hostGone(_ c: VsockConnection) {
        queueControl(c, .rst)
        close(c)
    }

    func close(_ c: VsockConnection) {
        guard connections[c.key] === c else { return }
        connections[c.key] = nil
        if c.token != 0 { poller.unwatch(fd: c.fd, token: c.token) }
        closeFD(c.fd)
        c.engine = nil
        resumeListener()
    }

    // MARK: host side

    /// The uds-path listener: a host program connected and will write `CONNECT <port>\n`.
    func fdReady(events: UInt32) {
        while true {
            let fd = vdv_accept_nb(device.listenFD)
            if fd == -EMFILE || fd == -ENFILE {
                // Out of fds: stop listening until a connection closes, or the poller would spin on the listener.
                device.log("out of file descriptors; not accepting host connections until one closes")
                pauseListener()
                return
            }
            if fd < 0 { return }
            var waiting = connections.keys.reduce(0) { $0 + ($1.peerCID == 0 ? 1 : 0) }
            if waiting >= VsockOptions.maxAwaitingConnectLine {
                // Full of silent host connections: those that never sent their line in time make room.
                let now = Double(monotonicMicros()) / 1e6
                for c in Array(connections.values) where c.state == .awaitingConnectLine
                    && now - c.acceptedAt > VsockOptions.connectLineTimeout {
                    close(c)
                    waiting -= 1
                }
            }
            guard connections.count < VsockOptions.maxConnections, waiting < VsockOptions.maxAwaitingConnectLine else {
                closeFD(fd)
                continue
            }
            // Keyed by fd until the guest port is known; peerCID 0 marks "not yet a connection".
            let c = VsockConnection(key: VsockConnKey(guestPort: UInt32(bitPattern: fd), peerCID: 0, peerPort: 0),
                                    type: .stream, fd: fd, state: .awaitingConnectLine)
            c.acceptedAt = Double(monotonicMicros()) / 1e6
            _ = register(c)
        }
    }

    private var listenerPaused = false

    private func pauseListener() {
        guard let t = listenerToken else { return }
        poller.unwatch(fd: device.listenFD, token: t)
        listenerToken = nil
        listenerPaused = true
    }

    private func resumeListener() {
        guard listenerPaused, rx != nil, tx != nil else { return }
        listenerPaused = false
        listenerToken = try? poller.watch(fd: device.listenFD, events: UInt32(VDV_EPOLLIN), self)
    }

    func connectionReady(_ c: VsockConnection, events: UInt32) {
        guard connections[c.key] === c else { return }
        if c.state == .awaitingConnectLine { return readConnectLine(c) }
        if events & UInt32(VDV_EPOLLOUT) != 0 { flushHost(c) }
        guard connections[c.key] === c else { return }
        if events & UInt32(VDV_EPOLLIN | VDV_EPOLLHUP | VDV_EPOLLRDHUP | VDV_EPOLLERR) != 0 { pumpHostToGuest(c) }
    }

    private func readConnectLine(_ c: VsockConnection) {
        var buf = [UInt8](repeating: 0, count: VsockOptions.maxConnectLine)
        let r = buf.withUnsafeMutableBytes { Glibc.read(c.fd, $0.baseAddress, VsockOptions.maxConnectLine - c.connectLine.count) }
        if r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return }
        guard r > 0 else { return close(c) }
        c.connectLine += buf[0..<r]
        guard let nl = c.connectLine.firstIndex(of: UInt8(ascii: "\n")) else {
            // A line longer than any CONNECT command is not one.
            if c.connectLine.count >= VsockOptions.maxConnectLine { close(c) }
            return
        }
        var lineBytes = Array(c.connectLine[..<nl])
        while let last = lineBytes.last, last == UInt8(ascii: "\r") || last == UInt8(ascii: " ") { lineBytes.removeLast() }
        let line = String(decoding: lineBytes, as: UTF8.self)
        let early = Array(c.connectLine[(nl + 1)...])
        let parts = line.split(separator: " ")
        guard parts.count == 2, parts[0] == "CONNECT", let port = UInt32(parts[1]) else {
            device.log("host connection sent '\(line.prefix(32))', expected CONNECT <port>; closed")
            return close(c)
        }
        guard rx != nil, tx != nil else {
            device.log("host connection for guest port \(port) closed: the guest driver has not started the device")
            return close(c)
        }
        var hostPort = nextHostPort
        while connections.keys.contains(where: { $0.peerPort == hostPort && $0.peerCID == VsockLayout.hostCID }) { hostPort &+= 1 }
        nextHostPort = hostPort &+ 1
        if nextHostPort < 1 << 30 { nextHostPort = 1 << 30 }
        let key = VsockConnKey(guestPort: port, peerCID: VsockLayout.hostCID, peerPort: hostPort)
        guard connections[key] == nil else { return close(c) }
        connections[c.key] = nil
        let conn = VsockConnection(key: key, type: .stream, fd: c.fd, state: .connecting)
        conn.early = early
        conn.engine = self
        conn.bufAlloc = bufAlloc
        conn.watched = 0
        conn.token = 0
        c.engine = nil
        connections[key] = conn
        // Nothing is read from the host until the guest accepts: out of epoll meanwhile.
        poller.unwatch(fd: c.fd, token: c.token)
        queueControl(conn, .request)
    }

    /// Host socket has data (or closed): read it straight into guest rx buffers as credit allows.
    func pumpHostToGuest(_ c: VsockConnection) {
        guard let rx, c.state == .established, !c.guestShutRcv, !c.hostEOF else { return }
        var rounds = 0
        while rounds < 64, connections[c.key] === c {
            rounds += 1
            let credit = c.peerCredit
            let hasEarly = !c.early.isEmpty
            let hasSeq = c.seqPendingOffset < c.seqPending.count
            if credit == 0 {
                c.pausedForCredit = true
                updateWatch(c)
                return
            }
            if c.type == .seqpacket && !hasSeq && !hasEarly {
                // Read one whole message; it goes out in fragments as credit and buffers allow.
                var probe: UInt8 = 0
                let size = recv(c.fd, &probe, 0, Int32(MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT))
                if size < 0 { if errno == EAGAIN || errno == EWOULDBLOCK { return }; return hostGone(c) }
                if size == 0 {
                    // An empty message and EOF both peek as 0 bytes; only EOF comes with a hang-up.
                    if vdv_peer_hung_up(c.fd) != 0 { return hostClosed(c) }
                    _ = recv(c.fd, &probe, 0, Int32(MSG_DONTWAIT))
                    var h = header(for: c, op: .rw)
                    h.flags = VsockLayout.seqEOM | VsockLayout.seqEOR
                    enqueue(h, [])
                    continue
                }
                guard size <= VsockOptions.maxSeqpacketMessage else { return hostGone(c) }
                c.seqPending = [UInt8](repeating: 0, count: size)
                let r = c.seqPending.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress, size, Int32(MSG_DONTWAIT)) }
                guard r == size else { return hostGone(c) }
                c.seqPendingOffset = 0
                continue
            }
            if c.type == .stream && !hasEarly && !c.splitHeaders {
                switch pumpStreamBatch(c, rx, credit: credit) {
                case .progress: continue
                case .wouldBlock: return
                case .noBuffers:
                    c.pausedForRx = true
                    stalled.append(c)
                    updateWatch(c)
                    return
                case .eof: return hostClosed(c)
                case .hostError: return hostGone(c)
                case .splitHeader: c.splitHeaders = true
                case .failed: return
                }
            }
            guard let head = (try? rx.vq.popHead()) ?? nil else {
                c.pausedForRx = true
                stalled.append(c)
                updateWatch(c)
                return
            }
            do { try rx.vq.readChain(head: head, into: &rxSegs) } catch { return fail(error) }
            let room = Int(rxSegs.writableBytes) - VsockLayout.headerSize
            guard rxSegs.readableCount == 0, room > 0 else { return fail(VirtqueueError.tooManySegments) }
            let want = min(room, Int(credit))
            var h = header(for: c, op: .rw)
            var n = 0
            if hasEarly {
                n = min(want, c.early.count)
                c.early.withUnsafeBytes { _ = rxSegs.copyToWritable(offset: VsockLayout.headerSize, from: $0.baseAddress!, length: n) }
                c.early.removeFirst(n)
            } else if hasSeq {
                n = min(want, c.seqPending.count - c.seqPendingOffset)
                c.seqPending.withUnsafeBytes {
                    _ = rxSegs.copyToWritable(offset: VsockLayout.headerSize, from: $0.baseAddress! + c.seqPendingOffset, length: n)
                }
                c.seqPendingOffset += n
                if c.seqPendingOffset == c.seqPending.count {
                    h.flags = VsockLayout.seqEOM | VsockLayout.seqEOR
                    c.seqPending = []
                    c.seqPendingOffset = 0
                }
            } else {
                guard let k = rxSegs.slice(writable: true, offset: VsockLayout.headerSize, length: want, into: iov, outCapacity: 64) else {
                    rx.vq.unpop()
                    return
                }
                let r = Glibc.readv(c.fd, iov, Int32(k))
                if r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                    rx.vq.unpop()
                    return
                }
                if r <= 0 {
                    rx.vq.unpop()
                    return r == 0 ? hostClosed(c) : hostGone(c)
                }
                n = r
            }
            h.len = UInt32(n)
            c.txCnt &+= UInt32(n)
            h.write(to: hdr)
            _ = rxSegs.copyToWritable(offset: 0, from: hdr, length: VsockLayout.headerSize)
            rx.complete(head: head, length: UInt32(VsockLayout.headerSize + n))
            rx.stats.add(.readBytes, UInt64(n))
        }
    }

    enum PumpResult { case progress, wouldBlock, noBuffers, eof, hostError, splitHeader, failed }

    /// Stream data: one readv fills several rx buffers at once (guests post small ones, 4 KiB for Linux),
    /// each buffer's header written after; buffers the read did not reach go back on the ring.
    private func pumpStreamBatch(_ c: VsockConnection, _ rx: QueueBinding, credit: UInt32) -> PumpResult {
        var chains = 0, iovCount = 0, room = 0
        let maxBytes = Int(min(credit, 1 << 20))
        while chains < VsockEngine.batchChains && room < maxBytes && iovCount < 60 {
            guard let head = (try? rx.vq.popHead()) ?? nil else { break }
            do { try rx.vq.readChain(head: head, into: &rxSegs) } catch {
                fail(error)
                return .failed
            }
            let space = min(Int(rxSegs.writableBytes) - VsockLayout.headerSize, maxBytes - room)
            // The header must sit in the first writable segment to be filled in after the read.
            guard rxSegs.readableCount == 0, space > 0, rxSegs.iov[0].iov_len >= VsockLayout.headerSize,
                  let k = rxSegs.slice(writable: true, offset: VsockLayout.headerSize, length: space,
                                       into: iov + iovCount, outCapacity: 64 - iovCount) else {
                // Another buffer layout (virtio 2.6.4: any split is allowed): the one-buffer path copes.
                rx.vq.unpop()
                if chains == 0 { return .splitHeader }
                break
            }
            batchHeads[chains] = head
            batchHeaders[chains] = rxSegs.iov[0].iov_base!
            batchRoom[chains] = space
            iovCount += k
            room += space
            chains += 1
        }
        guard chains > 0 else { return .noBuffers }
        let r = Glibc.readv(c.fd, iov, Int32(iovCount))
        if r <= 0 {
            for _ in 0..<chains { rx.vq.unpop() }
            if r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return .wouldBlock }
            return r == 0 ? .eof : .hostError
        }
        var left = r
        var used = 0
        while used < chains && left > 0 {
            let n = min(left, batchRoom[used])
            var h = header(for: c, op: .rw)
            h.len = UInt32(n)
            h.write(to: batchHeaders[used])
            rx.complete(head: batchHeads[used], length: UInt32(VsockLayout.headerSize + n))
            left -= n
            used += 1
        }
        for _ in used..<chains { rx.vq.unpop() }
        c.txCnt &+= UInt32(r)
        rx.stats.add(.readBytes, UInt64(r))
        return .progress
    }

    /// Host socket reached EOF: tell the guest this side sends no more (half-close, 5.10.6.5).
    private func hostClosed(_ c: VsockConnection) {
        c.hostEOF = true
        updateWatch(c)
        var h = header(for: c, op: .shutdown)
        h.flags = VsockLayout.shutdownSend
        enqueue(h, [])
    }

    /// epoll interest follows state: EPOLLIN only while we can forward, EPOLLOUT only while data waits.
    /// With no interest left the fd leaves epoll: a hung-up peer would otherwise report EPOLLHUP forever.
    func updateWatch(_ c: VsockConnection) {
        guard connections[c.key] === c else { return }
        var ev: UInt32 = 0
        if c.state == .awaitingConnectLine { ev = UInt32(VDV_EPOLLIN) }
        if c.state == .established && !c.guestShutRcv && !c.hostEOF && !c.pausedForRx && !c.pausedForCredit {
            ev |= UInt32(VDV_EPOLLIN | VDV_EPOLLRDHUP)
        }
        if c.unsentBytes > 0 { ev |= UInt32(VDV_EPOLLOUT) }
        guard ev != c.watched || (ev != 0 && c.token == 0) else { return }
        c.watched = ev
        if ev == 0 {
            if c.token != 0 { poller.unwatch(fd: c.fd, token: c.token) }
            c.token = 0
        } else if c.token == 0 {
            c.token = (try? poller.watch(fd: c.fd, events: ev, c)) ?? 0
        } else {
            poller.rewatch(fd: c.fd, events: ev, token: c.token)
        }
    }

    // MARK: packets to the guest

    func header(for c: VsockConnection, op: VsockOp) -> VsockHeader {
        var h = VsockHeader()
        h.srcCID = c.key.peerCID
        h.dstCID = guestCID
        h.srcPort = c.key.peerPort
        h.dstPort = c.key.guestPort
        h.type = c.type.rawValue
        h.op = op.rawValue
        h.bufAlloc = c.bufAlloc
        h.fwdCnt = c.fwdCnt
        c.advertisedFwdCnt = c.fwdCnt
        return h
    }

    private func queueControl(_ c: VsockConnection, _ op: VsockOp) {
        var h = header(for: c, op: op)
        if op == .request { h.len = 0 }
        enqueue(h, [])
    }

    /// A packet that breaks the connection's rules: RST, and the connection (if any) is gone on both sides.
    private func refuse(_ h: VsockHeader) {
        if h.dstCID == VsockLayout.hostCID,
           let c = connections[VsockConnKey(guestPort: h.srcPort, peerCID: VsockLayout.hostCID, peerPort: h.dstPort)] {
            close(c)
        }
        queueReset(for: h)
    }

    /// RST in answer to a packet with no connection behind it.
    private func queueReset(for p: VsockHeader) {
        var h = VsockHeader()
        h.srcCID = p.dstCID
        h.dstCID = guestCID
        h.srcPort = p.dstPort
        h.dstPort = p.srcPort
        h.type = p.type
        h.op = VsockOp.rst.rawValue
        enqueue(h, [])
    }

    @discardableResult
    func enqueue(_ h: VsockHeader, _ payload: [UInt8]) -> Bool {
        guard pending.count - pendingStart < VsockOptions.maxPendingPackets,
              pendingBytes + payload.count <= VsockOptions.maxPendingBytes else {
            device.log("guest is not taking packets (\(pending.count - pendingStart) waiting); dropping")
            return false
        }
        pending.append((h, payload, 0))
        pendingBytes += payload.count
        _ = flushToGuest()
        return true
    }

    /// Sends waiting packets into rx buffers; payloads larger than a buffer are split (EOM on the last part).
    @discardableResult
    func flushToGuest() -> Bool {
        guard let rx else { return false }
        var did = false
        while pendingStart < pending.count {
            let (h, payload, sent) = pending[pendingStart]
            guard let head = (try? rx.vq.popHead()) ?? nil else { break }
            do { try rx.vq.readChain(head: head, into: &rxSegs) } catch {
                fail(error)
                return did
            }
            let room = max(0, Int(rxSegs.writableBytes) - VsockLayout.headerSize)
            let n = min(room, payload.count - sent)
            var out = h
            out.len = UInt32(n)
            if sent + n < payload.count { out.flags &= ~(VsockLayout.seqEOM | VsockLayout.seqEOR) }
            out.write(to: hdr)
            let hn = rxSegs.copyToWritable(offset: 0, from: hdr, length: VsockLayout.headerSize)
            if n > 0 {
                payload.withUnsafeBytes { _ = rxSegs.copyToWritable(offset: VsockLayout.headerSize, from: $0.baseAddress! + sent, length: n) }
            }
            rx.complete(head: head, length: UInt32(hn + n))
            did = true
            if sent + n < payload.count {
                pending[pendingStart].2 = sent + n
            } else {
                pendingBytes -= payload.count
                pending[pendingStart] = (h, [], 0)
                pendingStart += 1
            }
        }
        // Sent entries are dropped once they are half of the array, so it never grows with what went out.
        if pendingStart == pending.count {
            pending.removeAll(keepingCapacity: true)
            pendingStart = 0
        } else if pendingStart > 64 && pendingStart * 2 > pending.count {
            pending.removeFirst(pendingStart)
            pendingStart = 0
        }
        return did
    }

    // MARK: siblings

    /// Guest-to-guest: packets addressed to a sibling's CID go to that sibling's rx queue unchanged.
    private func relayToSibling(_ h: VsockHeader) {
        guard let sibling = device.registry.sibling(of: device, cid: h.dstCID)?.engine, sibling.rx != nil else {
            if h.op != VsockOp.rst.rawValue { queueReset(for: h) }
            return
        }
        // Linux never sends more than 64 KiB in one packet (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE); neither may a relay.
        guard h.len <= VsockOptions.maxRelayedPacket else {
            tx?.stats.add(.errors)
            if h.op != VsockOp.rst.rawValue { queueReset(for: h) }
            return
        }
        var payload = [UInt8](repeating: 0, count: Int(h.len))
        if h.len > 0 { payload.withUnsafeMutableBytes { _ = txSegs.copyReadable(offset: VsockLayout.headerSize, into: $0.baseAddress!, length: Int(h.len)) } }
        tx?.stats.add(.writtenBytes, UInt64(h.len))
        if !sibling.enqueue(h, payload) && h.op != VsockOp.rst.rawValue { queueReset(for: h) }
    }
}
