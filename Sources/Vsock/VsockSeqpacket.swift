#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Virtio

/// SOCK_SEQPACKET (virtio 1.3, 5.10.6.6.1): message boundaries kept both ways. The guest's fragments are
/// gathered until EOM and written to the host socket as one message; a host message is read whole and goes to
/// the guest in fragments, EOM on the last.
extension VsockEngine {
    func seqpacketFromGuest(_ c: VsockConnection, _ h: VsockHeader) {
        let len = Int(h.len)
        guard c.seqIn.count + len <= VsockOptions.maxSeqpacketMessage,
              c.unsentBytes + c.seqIn.count + len <= Int(c.bufAlloc) else { return violation(c, "seqpacket over credit") }
        appendPayload(&c.seqIn, len)
        if h.flags & VsockLayout.seqEOM != 0 {
            c.seqOut.append(c.seqIn)
            c.seqIn = []
            flushHost(c)
        }
    }

    enum SeqpacketRead { case message, empty, wouldBlock, eof, failed }

    /// Reads one whole host message into `c.seqPending`; an empty message is reported as such.
    func readSeqpacketMessage(_ c: VsockConnection) -> SeqpacketRead {
        var probe: UInt8 = 0
        let size = recv(c.fd, &probe, 0, Int32(MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT))
        if size < 0 { return errno == EAGAIN || errno == EWOULDBLOCK ? .wouldBlock : .failed }
        if size == 0 {
            // An empty message and EOF both peek as 0 bytes; only EOF comes with a hang-up.
            if vdv_peer_hung_up(c.fd) != 0 { return .eof }
            _ = recv(c.fd, &probe, 0, Int32(MSG_DONTWAIT))
            return .empty
        }
        guard size <= VsockOptions.maxSeqpacketMessage else { return .failed }
        c.seqPending = [UInt8](repeating: 0, count: size)
        let r = c.seqPending.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress, size, Int32(MSG_DONTWAIT)) }
        guard r == size else { return .failed }
        c.seqPendingOffset = 0
        return .message
    }
}
