#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Virtio

/// One frontend's socket: reads framed messages with their fds, writes replies. Blocking, on the export's
/// control thread; a stop eventfd interrupts the wait so shutdown never hangs on a silent frontend.
final class VhostUserConnection {
    let fd: Int32
    let stopFD: Int32

    /// While set (CLOCK_MONOTONIC microseconds), waits give up at this time and receive throws handshakeTimedOut.
    private var handshakeDeadline: UInt64?
    private let handshakeMillis: Int

    /// `handshakeMillis`: how long the frontend has to start its handshake (0: forever); see handshakeDone().
    init(fd: Int32, stopFD: Int32, handshakeMillis: Int = 0) {
        self.fd = fd
        self.stopFD = stopFD
        self.handshakeMillis = handshakeMillis
        if handshakeMillis > 0 { handshakeDeadline = monotonicMicros() + UInt64(handshakeMillis) * 1000 }
        // Non-blocking: every wait is a poll() that the stop fd can interrupt, for reads and for replies.
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    }

    deinit { closeFD(fd) }

    /// The frontend has started a real session (SET_OWNER or SET_FEATURES): no deadline from now on.
    func handshakeDone() { handshakeDeadline = nil }

    /// Set when a wait gave up at the handshake deadline.
    private(set) var timedOut = false
    /// Why a wait ended without data: the handshake deadline, or the peer or the export going away.
    private var lost: VhostUserError { timedOut ? .handshakeTimedOut(milliseconds: handshakeMillis) : .disconnected }

    /// Waits until the socket is readable; false if the stop fd fired first.
    private func waitReadable() -> Bool { wait(for: Int16(POLLIN)) }

    private func wait(for events: Int16) -> Bool {
        var fds = [pollfd(fd: fd, events: events, revents: 0), pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0)]
        while true {
            var timeout: Int32 = -1
            if let d = handshakeDeadline {
                let now = monotonicMicros()
                guard now < d else {
                    timedOut = true
                    return false
                }
                timeout = Int32(clamping: (d - now + 999) / 1000)
            }
            let n = poll(&fds, 2, timeout)
            if n < 0 && errno == EINTR { continue }
            if n == 0 { continue }
            if fds[1].revents != 0 { return false }
            return true
        }
    }

    /// Reads one message. Throws .disconnected on EOF or stop, .malformed on a framing error.
    func receive() throws -> VhostUserMessage {
        var header = [UInt8](repeating: 0, count: VhostUserMessage.headerSize)
        var fds = [Int32](repeating: -1, count: VhostUserMessage.maxFDs)
        var nfds: UInt32 = 0
        var truncated: Int32 = 0
        var n: Int64
        repeat {
            guard waitReadable() else {
                throw timedOut ? VhostUserError.handshakeTimedOut(milliseconds: handshakeMillis) : VhostUserError.disconnected
            }
            n = header.withUnsafeMutableBytes { h in
                fds.withUnsafeMutableBufferPointer { f in
                    vdv_recv_with_fds(fd, h.baseAddress, UInt64(h.count), f.baseAddress, UInt32(f.count), &nfds, &truncated)
                }
            }
        } while n == -Int64(EAGAIN)
        let received = Array(fds.prefix(Int(nfds)))
        func fail(_ e: VhostUserError) -> VhostUserError {
            for f in received { closeFD(f) }
            return e
        }
        if n == 0 { throw fail(lost) }
        if n < 0 {
            if n == -Int64(ECONNRESET) { throw fail(lost) }
            throw fail(.malformed("recvmsg: \(String(cString: strerror(Int32(-n))))"))
        }
        if truncated == 2 { throw fail(.malformed("the fds of the message could not be received: vdevd is out of file descriptors (RLIMIT_NOFILE)")) }
        if truncated != 0 { throw fail(.malformed("more than \(VhostUserMessage.maxFDs) fds")) }
        if n < VhostUserMessage.headerSize {
            // The rest of the header follows without fds.
            guard readFully(&header, from: Int(n)) else { throw fail(lost) }
        }
        let r = PayloadReader(header)
        let request = VhostUserRequest(rawValue: try r.u32(0))
        let flags = try r.u32(4)
        let size = Int(try r.u32(8))
        guard flags & 0x3 == VhostUserMessage.version else { throw fail(.malformed("version \(flags & 0x3) in \(request)")) }
        guard size <= VhostUserMessage.maxPayload else { throw fail(.malformed("payload of \(size) bytes in \(request)")) }
        var payload = [UInt8](repeating: 0, count: size)
        if size > 0 { guard readFully(&payload, from: 0) else { throw fail(lost) } }
        return VhostUserMessage(request: request, flags: flags, payload: payload, fds: received)
    }

    /// Reads the rest of a message; a frontend that stalls mid-message still cannot block a stop.
    private func readFully(_ buf: inout [UInt8], from start: Int) -> Bool {
        var off = start
        while off < buf.count {
            guard waitReadable() else { return false }
            let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + off, $0.count - off) }
            if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
            if n <= 0 { return false }
            off += n
        }
        return true
    }

    func send(_ message: VhostUserMessage) throws {
        let bytes = message.encoded()
        var off = 0
        var fds = message.fds
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { b in
                fds.withUnsafeMutableBufferPointer { f in
                    vdv_send_with_fds(fd, b.baseAddress! + off, UInt64(b.count - off), f.baseAddress, UInt32(f.count))
                }
            }
            if n == -Int64(EAGAIN) {
                // A frontend that does not read its replies blocks only this connection, and never a stop.
                guard wait(for: Int16(POLLOUT)) else { throw VhostUserError.disconnected }
                continue
            }
            if n <= 0 { throw VhostUserError.disconnected }
            off += Int(n)
            fds = []
        }
    }

    /// A reply carries the request's code, the version and the reply flag.
    func reply(to request: VhostUserRequest, payload: [UInt8], fds: [Int32] = []) throws {
        try send(VhostUserMessage(request: request, flags: VhostUserMessage.version | VhostUserMessage.flagReply,
                                  payload: payload, fds: fds))
    }

    func replyU64(to request: VhostUserRequest, _ v: UInt64) throws {
        var p = [UInt8]()
        p.appendLE(v)
        try reply(to: request, payload: p)
    }
}
