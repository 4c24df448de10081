#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Virtio

/// A connection's states: opened (guest REQUEST or host CONNECT line), half-closed each way, closed;
/// and the epoll interest that follows its state.
extension VsockEngine {
    func connectToHost(_ h: VsockHeader, type: VsockType) {
        guard connections.count < VsockOptions.maxConnections else {
            device.log("connection limit \(VsockOptions.maxConnections) reached; refusing guest port \(h.srcPort)")
            queueReset(for: h)
            return
        }
        let path = "\(device.options.udsPath)_\(h.dstPort)"
        let fd: Int32
        switch VsockHostSocket.connect(path: path, type: type == .seqpacket ? Int32(SOCK_SEQPACKET.rawValue) : Int32(SOCK_STREAM.rawValue),
                                       allowedOwners: device.options.hostSocketOwners) {
        case .connected(let f):
            fd = f
            if !capsHit.isEmpty { capsHit.remove("refused:\(path)") }
        case .absent:
            // Nothing listens for that port: the guest gets RST (its connect fails with ECONNRESET).
            queueReset(for: h)
            return
        case .refused(let why):
            // Once per path while it stays refused: a guest retrying in a loop does not flood the log.
            if capsHit.insert("refused:\(path)").inserted {
                device.log("guest port \(h.srcPort): \(path) \(why); not connecting (RST; not logged again for this path)")
            }
            tx?.stats.add(.errors)
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

    func register(_ c: VsockConnection) -> Bool {
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

    func finishShutdowns(_ c: VsockConnection) {
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

    func violation(_ c: VsockConnection, _ why: String) {
        device.log("guest port \(c.key.guestPort): \(why); connection reset")
        tx?.stats.add(.errors)
        queueControl(c, .rst)
        close(c)
    }

    func hostGone(_ c: VsockConnection) {
        queueControl(c, .rst)
        close(c)
    }

    /// Host socket reached EOF: tell the guest this side sends no more (half-close, 5.10.6.5).
    func hostClosed(_ c: VsockConnection) {
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

    func connectionReady(_ c: VsockConnection, events: UInt32) {
        guard connections[c.key] === c else { return }
        if c.state == .awaitingConnectLine { return readConnectLine(c) }
        if events & UInt32(VDV_EPOLLOUT) != 0 { flushHost(c) }
        guard connections[c.key] === c else { return }
        if events & UInt32(VDV_EPOLLIN | VDV_EPOLLHUP | VDV_EPOLLRDHUP | VDV_EPOLLERR) != 0 { pumpHostToGuest(c) }
    }
}
