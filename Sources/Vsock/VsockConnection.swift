#if canImport(Glibc)
import Glibc
#endif
import Virtio

/// Identifies a connection from the guest's side: its port, and the peer (host CID 2 or a sibling) and port.
struct VsockConnKey: Hashable {
    var guestPort: UInt32
    var peerCID: UInt64
    var peerPort: UInt32
}

/// One guest connection bridged to a host Unix socket. Lives on the device's poller thread.
final class VsockConnection: FDWatcher {
    enum State { case awaitingConnectLine, connecting, established }

    let key: VsockConnKey
    let type: VsockType
    let fd: Int32
    var state: State
    var token: UInt64 = 0
    var watched: UInt32 = 0
    weak var engine: VsockEngine?

    // Credit (virtio 1.3, 5.10.6.3): what the guest told us of its receive buffer, and what we sent it.
    var peerBufAlloc: UInt32 = 0
    var peerFwdCnt: UInt32 = 0
    var txCnt: UInt32 = 0
    // Guest-to-host bytes written to the host socket, and the value we last told the guest.
    var fwdCnt: UInt32 = 0
    var advertisedFwdCnt: UInt32 = 0
    /// Payload bytes received from the guest (written to the host or still held): what the guest's tx_cnt
    /// must be, so bufAlloc - (rxCnt - advertisedFwdCnt) is the credit the guest believes it has.
    var rxCnt: UInt32 = 0

    // Stall detector: the counters as last seen, when they last moved, whether this stall was reported.
    var progressMark: (UInt32, UInt32, UInt32, UInt32, UInt32) = (0, 0, 0, 0, 0)
    var lastProgressMicros: UInt64 = 0
    var stallReported = false

    /// Guest data the host socket has not taken yet; never more than our buf_alloc (the guest's credit).
    var outBuf: [UInt8] = []
    var outStart = 0
    /// SEQPACKET: the guest message being assembled, and whole messages waiting for the host socket.
    var seqIn: [UInt8] = []
    var seqOut: [[UInt8]] = []
    /// SEQPACKET host-to-guest: a message read whole, sent in fragments as credit allows.
    var seqPending: [UInt8] = []
    var seqPendingOffset = 0
    /// Host bytes that arrived with the CONNECT line, sent once the guest accepts.
    var early: [UInt8] = []
    var connectLine: [UInt8] = []

    var guestShutSend = false   // guest will send no more: host socket gets SHUT_WR once outBuf drains
    var guestShutRcv = false    // guest will receive no more: stop reading the host socket
    var hostEOF = false         // host socket will send no more: guest was told SHUTDOWN(SEND)
    var hostShutWrDone = false
    var pausedForRx = false
    var pausedForCredit = false
    /// A CREDIT_UPDATE for this connection waits in the engine's queue (one at a time: it carries the
    /// counters current when it reaches an rx buffer, not when it was queued).
    var creditUpdateQueued = false
    /// On the engine's list of connections whose freed space is told at the end of the pass.
    var creditDue = false
    /// Paused for credit: when the pause began or we last asked the guest for its counters (CREDIT_REQUEST),
    /// in monotonic microseconds; 0 when not paused.
    var creditRequestedAt: UInt64 = 0
    /// How long after the last CREDIT_REQUEST the next one goes (doubles while the pause lasts).
    var creditRequestBackoff: UInt64 = 0
    /// Our buf_alloc for this connection: tx-buffer-size, or less for SEQPACKET when the host socket cannot
    /// take a message that large (the guest then refuses bigger messages with EMSGSIZE).
    var bufAlloc: UInt32 = 0
    /// When the host connection was accepted (CLOCK_MONOTONIC seconds), for the CONNECT line timeout.
    var acceptedAt = 0.0

    init(key: VsockConnKey, type: VsockType, fd: Int32, state: State) {
        self.key = key
        self.type = type
        self.fd = fd
        self.state = state
    }

    var unsentBytes: Int { outBuf.count - outStart + seqOut.reduce(0) { $0 + $1.count } }

    /// How many bytes the guest can take now (its buf_alloc minus what it has not consumed).
    var peerCredit: UInt32 {
        let inFlight = txCnt &- peerFwdCnt
        return inFlight >= peerBufAlloc ? 0 : peerBufAlloc - inFlight
    }

    /// Credit the guest believes it has towards us (5.10.6.3), from what we told it last.
    var guestCredit: UInt32 {
        let inFlight = rxCnt &- advertisedFwdCnt
        return inFlight >= bufAlloc ? 0 : bufAlloc - inFlight
    }

    func fdReady(events: UInt32) { engine?.connectionReady(self, events: events) }
}
