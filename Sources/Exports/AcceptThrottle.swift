#if canImport(Glibc)
import Glibc
#endif

/// An accept that fails for want of fds (EMFILE, ENFILE) leaves the connection queued and the listener readable:
/// a loop that polls again at once spins on a core (issue 14, finding 5). The throttle waits a while on the stop fd
/// instead, and says so once per episode.
public struct AcceptThrottle {
    /// How long an accept loop waits after running out of fds before it tries again.
    public static let pauseMillis: Int32 = 100
    public private(set) var exhausted = false
    /// Pauses taken, for tests and stats.
    public private(set) var pauses = 0

    public init() {}

    /// Called with vdv_accept's result. Out of fds: logs once, waits up to pauseMillis on stopFD and returns true
    /// (the caller polls again). Otherwise ends an episode and returns false.
    public mutating func pauseIfExhausted(_ rc: Int32, stopFD: Int32, log: (String) -> Void) -> Bool {
        guard rc == -EMFILE || rc == -ENFILE else {
            if rc >= 0 && exhausted {
                exhausted = false
                log("file descriptors available again; accepting")
            }
            return false
        }
        if !exhausted {
            exhausted = true
            log("out of file descriptors (\(rc == -EMFILE ? "this process's RLIMIT_NOFILE" : "the system's file table")); pausing accepts")
        }
        pauses += 1
        var p = pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0)
        _ = poll(&p, 1, AcceptThrottle.pauseMillis)
        return true
    }
}
