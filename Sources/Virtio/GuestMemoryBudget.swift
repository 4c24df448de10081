#if canImport(Glibc)
import Glibc
#endif

/// What one export's frontend may make vdevd map (issue 14, finding 3): every guest memory region of the export is
/// charged here while its mapping lives, whether in the table in use or in an older table that in-flight requests
/// still hold on a poller (a retired table). Before a new table is mapped:
/// - older retired tables must be gone: at most the table in use and the one it replaces are mapped (a frontend
///   swapping tables under load cannot pile them up); the control thread waits `retiredWaitMillis` for them;
/// - with a limit (`max-guest-memory`), what is mapped plus the new regions stays within it.
/// Charged from the control thread, released from whichever thread drops the last table (a poller): locked, never
/// per request.
public final class GuestMemoryBudget {
    /// The export's cap on mapped guest memory, current and retiring tables together (nil: no fixed cap).
    public var limit: UInt64?
    /// How long a new table waits for older retired tables to be released before it is refused.
    public static var retiredWaitMillis = 2000
    private let lock = Lock()
    private var mapped: UInt64 = 0

    public init(limit: UInt64? = nil) { self.limit = limit }

    public var mappedBytes: UInt64 { lock.withLock { mapped } }

    func charge(_ bytes: UInt64) { lock.withLock { mapped += bytes } }
    func release(_ bytes: UInt64) { lock.withLock { mapped -= min(bytes, mapped) } }

    /// Nil if `newBytes` more may be mapped while the table in use maps `currentBytes`; else why not (for the log).
    public func refusal(newBytes: UInt64, currentBytes: UInt64) -> String? {
        let deadline = monotonicMicros() + UInt64(GuestMemoryBudget.retiredWaitMillis) * 1000
        var retired = mappedBytes &- min(mappedBytes, currentBytes)
        while retired > 0 && monotonicMicros() < deadline {
            usleep(1000)
            retired = mappedBytes &- min(mappedBytes, currentBytes)
        }
        if retired > 0 {
            return "export at its cap of retired memory tables: \(retired) bytes of an older table are still held by in-flight requests after \(GuestMemoryBudget.retiredWaitMillis) ms"
        }
        if let limit {
            let (total, overflow) = mappedBytes.addingReportingOverflow(newBytes)
            if overflow || total > limit {
                return "export at its cap of mapped guest memory: \(mappedBytes) bytes mapped + \(newBytes) new would exceed max-guest-memory=\(limit)"
            }
        }
        return nil
    }
}
