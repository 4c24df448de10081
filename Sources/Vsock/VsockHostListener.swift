#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Virtio

/// The uds-path listener and the `CONNECT <port>` line of host-initiated connections.
extension VsockEngine {
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
            // Full of host connections that have not sent their line: the oldest makes room (a real client sends
            // its line at once, so rotating silent connections can no longer keep everyone out).
            if !makeRoomForHostConnection() {
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

    func pauseListener() {
        guard let t = listenerToken else { return }
        poller.unwatch(fd: device.listenFD, token: t)
        listenerToken = nil
        listenerPaused = true
    }

    func resumeListener() {
        guard listenerPaused, rx != nil, tx != nil else { return }
        listenerPaused = false
        listenerToken = try? poller.watch(fd: device.listenFD, events: UInt32(VDV_EPOLLIN), self)
    }

    func readConnectLine(_ c: VsockConnection) {
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
            device.log("host connection sent '\(logEscaped(lineBytes, limit: 32))', expected CONNECT <port>; closed")
            return close(c)
        }
        guard rx != nil, tx != nil else {
            device.log("host connection for guest port \(port) closed: the guest driver has not started the device")
            return close(c)
        }
        guard roomForGuestAnswer() else { return close(c) }
        var hostPort = nextHostPort
        while connections.keys.contains(where: { $0.peerPort == hostPort && $0.peerCID == VsockLayout.hostCID }) { hostPort &+= 1 }
        nextHostPort = hostPort &+ 1
        if nextHostPort < 1 << 30 { nextHostPort = 1 << 30 }
        let key = VsockConnKey(guestPort: port, peerCID: VsockLayout.hostCID, peerPort: hostPort)
        guard connections[key] == nil else { return close(c) }
        connections[c.key] = nil
        let conn = VsockConnection(key: key, type: .stream, fd: c.fd, state: .connecting)
        conn.early = early
        conn.acceptedAt = Double(monotonicMicros()) / 1e6
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
}
