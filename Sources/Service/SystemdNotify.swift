#if canImport(Glibc)
import Glibc
#endif
import CVdevd

/// sd_notify(3) without libsystemd: a datagram to $NOTIFY_SOCKET (a path, or `@name` in the abstract
/// namespace). Does nothing when the variable is unset (not started by systemd with Type=notify).
public enum SystemdNotify {
    /// Sends `state` (e.g. "READY=1\nSTATUS=..."); returns false if there is no socket or the send failed.
    @discardableResult
    public static func send(_ state: String) -> Bool {
        guard let path = getenv("NOTIFY_SOCKET").map({ String(cString: $0) }), !path.isEmpty else { return false }
        return vdv_notify_datagram(path, state) == 0
    }
}
