#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Virtio

/// Caps and timeouts on host connections that do not carry data yet (issue 14, findings 5 and 6): those that have
/// not sent their CONNECT line, and those that sent it and wait for the guest's answer. Each cap is logged once
/// when reached (and once when left); timeouts are applied by the engine's timer.
extension VsockEngine {
    /// Before accepting a host connection: false if the export is at its connection cap; at the cap of connections
    /// without a CONNECT line, the oldest of them is closed to make room.
    func makeRoomForHostConnection() -> Bool {
        guard connections.count < VsockOptions.maxConnections else {
            noteCap("connections", "at its cap of \(VsockOptions.maxConnections) vsock connections; closing new host connections")
            return false
        }
        leaveCap("connections")
        let waiting = connections.values.filter { $0.state == .awaitingConnectLine }
        guard waiting.count >= VsockOptions.maxAwaitingConnectLine else {
            leaveCap("awaiting-line")
            return true
        }
        noteCap("awaiting-line", "at its cap of \(VsockOptions.maxAwaitingConnectLine) host connections without a CONNECT line; closing the oldest to make room")
        if let oldest = waiting.min(by: { $0.acceptedAt < $1.acceptedAt }) { close(oldest) }
        return true
    }

    /// After a CONNECT line: false (the caller closes the connection) if as many already wait for the guest.
    func roomForGuestAnswer() -> Bool {
        let n = connections.values.reduce(0) { $0 + ($1.state == .connecting && $1.key.peerCID == VsockLayout.hostCID ? 1 : 0) }
        guard n >= VsockOptions.maxAwaitingGuestAnswer else {
            leaveCap("awaiting-guest")
            return true
        }
        noteCap("awaiting-guest", "at its cap of \(VsockOptions.maxAwaitingGuestAnswer) host connections waiting for the guest's answer; closing new ones")
        return false
    }

    /// On each timer tick: silent connections past the line timeout are closed; connections the guest has not
    /// answered within its timeout, or whose host peer gave up, are closed and the guest told RST.
    func expireWaitingHostConnections(now: UInt64) {
        let seconds = Double(now) / 1e6
        var silent = 0, unanswered = 0, abandoned = 0
        for c in Array(connections.values) {
            switch c.state {
            case .awaitingConnectLine where seconds - c.acceptedAt > VsockOptions.connectLineTimeout:
                silent += 1
                close(c)
            case .connecting where c.key.peerCID == VsockLayout.hostCID && c.acceptedAt > 0:
                let late = seconds - c.acceptedAt > VsockOptions.guestAnswerTimeout
                let gone = !late && peerClosed(c.fd)
                guard late || gone else { continue }
                if late { unanswered += 1 } else { abandoned += 1 }
                queueControl(c, .rst)
                close(c)
            default:
                continue
            }
        }
        if silent > 0 { device.log("closed \(silent) host connection(s) that sent no CONNECT line within \(VsockOptions.connectLineTimeout) s") }
        if unanswered > 0 { device.log("closed \(unanswered) host connection(s) the guest did not answer within \(VsockOptions.guestAnswerTimeout) s") }
        if abandoned > 0 { device.log("closed \(abandoned) host connection(s) whose client gave up before the guest answered") }
    }

    /// The client closed its socket (POLLHUP), not merely shut down its sending side (a client such as
    /// `echo ... | socat` half-closes after its CONNECT line and still waits for the answer).
    private func peerClosed(_ fd: Int32) -> Bool {
        var p = pollfd(fd: fd, events: 0, revents: 0)
        return poll(&p, 1, 0) > 0 && p.revents & Int16(POLLHUP | POLLERR) != 0
    }

    private func noteCap(_ name: String, _ message: String) {
        if capsHit.insert(name).inserted { device.log(message) }
    }

    private func leaveCap(_ name: String) {
        if capsHit.remove(name) != nil { device.log("below its cap again (\(name))") }
    }
}
