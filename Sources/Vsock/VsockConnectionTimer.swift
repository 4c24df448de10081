#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Virtio

/// The engine's clock: a timerfd on its poller, ticking only while connections exist. Each tick asks guests
/// that owe us credit again (CREDIT_REQUEST) and looks for stalled connections: a connection with work
/// pending and no progress for the stall timeout is logged once with its state and counted (`stalls` in the
/// tx queue's stats), so a stall in the field leaves evidence (issue 8).
final class VsockConnectionTimer: FDWatcher {
    unowned(unsafe) let engine: VsockEngine
    /// 0: no stall check.
    let stallTimeoutMicros: UInt64
    let intervalMs: UInt32
    let fd: Int32
    var token: UInt64 = 0
    private(set) var armed = false

    init?(engine: VsockEngine, stallTimeoutMs: UInt32) {
        let fd = vdv_timerfd_create()
        guard fd >= 0 else { return nil }
        self.engine = engine
        self.fd = fd
        stallTimeoutMicros = UInt64(stallTimeoutMs) * 1000
        // A stall is reported between 1 and 1.25 timeouts after it began; credit is asked for again at least
        // every creditRequestInterval.
        let credit = UInt32(VsockOptions.creditRequestIntervalMicros / 1000)
        intervalMs = stallTimeoutMs == 0 ? credit : max(10, min(stallTimeoutMs / 4, credit))
    }

    func start(on poller: Poller) {
        token = (try? poller.watch(fd: fd, events: UInt32(VDV_EPOLLIN), self)) ?? 0
    }

    func stop(on poller: Poller) {
        if token != 0 { poller.unwatch(fd: fd, token: token) }
        token = 0
        closeFD(fd)
    }

    /// Ticks while there are connections; an idle device has no timer running.
    func arm(_ on: Bool) {
        guard on != armed else { return }
        armed = on
        _ = vdv_timerfd_arm(fd, on ? intervalMs : 0)
    }

    func fdReady(events: UInt32) {
        var ticks: UInt64 = 0
        _ = Glibc.read(fd, &ticks, 8)
        engine.tick(now: monotonicMicros(), stallTimeout: stallTimeoutMicros)
    }
}

extension VsockEngine {
    /// A connection has work pending when data waits in either direction or either side waits for credit.
    func workPending(_ c: VsockConnection, readable: Bool) -> Bool {
        guard c.state == .established else { return c.state == .connecting }
        return c.unsentBytes > 0 || c.pausedForRx || c.pausedForCredit || c.guestCredit == 0
            || (readable && !c.hostEOF && !c.guestShutRcv) || !c.early.isEmpty
            || c.seqPendingOffset < c.seqPending.count
    }

    func tick(now: UInt64, stallTimeout: UInt64) {
        guard !connections.isEmpty else {
            timer?.arm(false)
            return
        }
        expireWaitingHostConnections(now: now)
        for c in connections.values where c.pausedForCredit { askForCredit(c, now: now) }
        if stallTimeout > 0 { checkStalls(now: now, timeout: stallTimeout) }
    }

    func checkStalls(now: UInt64, timeout: UInt64) {
        for c in connections.values where c.key.peerCID != 0 {
            let mark = (c.txCnt, c.peerFwdCnt, c.rxCnt, c.fwdCnt, c.advertisedFwdCnt)
            if mark != c.progressMark || c.lastProgressMicros == 0 {
                if c.stallReported {
                    device.log("guest port \(c.key.guestPort) <-> host port \(c.key.peerPort): moving again")
                }
                c.progressMark = mark
                c.lastProgressMicros = now
                c.stallReported = false
                continue
            }
            guard !c.stallReported, now &- c.lastProgressMicros >= timeout else { continue }
            var p = pollfd(fd: c.fd, events: Int16(POLLIN | POLLOUT), revents: 0)
            _ = poll(&p, 1, 0)
            let readable = p.revents & Int16(POLLIN | POLLHUP) != 0
            guard workPending(c, readable: readable) else { continue }
            c.stallReported = true
            tx?.stats.add(.stalls)
            device.log("stall: \(describe(c, revents: p.revents)); no progress for \((now &- c.lastProgressMicros) / 1000) ms")
        }
    }

    /// The connection's state in one line: credit both ways, bytes queued each way, socket readiness.
    func describe(_ c: VsockConnection, revents: Int16) -> String {
        var ready: [String] = []
        if revents & Int16(POLLIN) != 0 { ready.append("in") }
        if revents & Int16(POLLOUT) != 0 { ready.append("out") }
        if revents & Int16(POLLHUP) != 0 { ready.append("hup") }
        var flags: [String] = []
        if c.pausedForRx { flags.append("waiting-rx-buffers") }
        if c.pausedForCredit { flags.append("waiting-guest-credit") }
        if c.hostEOF { flags.append("host-eof") }
        if c.guestShutSend { flags.append("guest-shut-send") }
        if c.guestShutRcv { flags.append("guest-shut-rcv") }
        let queued = pending[pendingStart...].reduce(0) { n, p in
            n + (p.0.dstPort == c.key.guestPort && p.0.srcPort == c.key.peerPort && p.0.srcCID == c.key.peerCID ? 1 : 0)
        }
        let rxAvail = rx.flatMap { try? $0.vq.pendingCount() }.map(String.init) ?? "none"
        return "guest port \(c.key.guestPort) <-> host port \(c.key.peerPort) (\(c.state))"
            + " host->guest: sent \(c.txCnt), guest fwd_cnt \(c.peerFwdCnt), credit \(c.peerCredit) of \(c.peerBufAlloc)"
            + " guest->host: received \(c.rxCnt), written \(c.fwdCnt), told \(c.advertisedFwdCnt), guest credit \(c.guestCredit) of \(c.bufAlloc), held \(c.unsentBytes)"
            + " socket ready [\(ready.joined(separator: ","))] epoll [\(c.watched)] flags [\(flags.joined(separator: ","))]"
            + " packets waiting for it \(queued) (all \(pending.count - pendingStart)), rx buffers \(rxAvail)"
    }
}
