#if canImport(Glibc)
import Glibc
#endif
import CVdevd

/// An owned eventfd: the notifier between a guest's driver, the daemon's threads and pollers.
public final class EventFD {
    public let fd: Int32
    public let owned: Bool

    public init(nonblocking: Bool = true) throws {
        fd = try checkNegErrno("eventfd", vdv_eventfd(0, nonblocking ? 1 : 0))
        owned = true
    }

    /// Adopts an fd received from a peer (a kick or call fd); closed on deinit.
    public init(adopting fd: Int32) {
        self.fd = fd
        owned = true
    }

    /// Adopts an fd a peer sent as a kick, call or err notifier: it must be an eventfd, and is made
    /// non-blocking so neither a full counter nor a reader on the other side can stall a poller.
    /// Returns nil (and leaves the fd to the caller) for anything else.
    public init?(adoptingPeer fd: Int32) {
        guard vdv_is_eventfd(fd) != 0 else { return nil }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        self.fd = fd
        owned = true
    }

    deinit { if owned { closeFD(fd) } }

    /// Adds one to the counter; never blocks for long (the counter saturating is not a failure that matters here).
    @inline(__always)
    public func signal() {
        var one: UInt64 = 1
        _ = Glibc.write(fd, &one, 8)
    }

    /// Reads and clears the counter; returns 0 if nothing was pending (non-blocking fds).
    @discardableResult
    public func drain() -> UInt64 {
        var value: UInt64 = 0
        let n = Glibc.read(fd, &value, 8)
        return n == 8 ? value : 0
    }
}
