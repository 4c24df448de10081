import CVdevd

/// A poller's time, split into passes that found work (busy) and passes that found none plus sleep (idle),
/// in microseconds. Written by the poller thread only (a relaxed store per pass, no contention); read by
/// anyone (the management socket's stats, the metrics scrape).
public final class PollerStats {
    private let storage = UnsafeMutablePointer<UInt64>.allocate(capacity: 2)
    public init() { storage.initialize(repeating: 0, count: 2) }
    deinit { storage.deallocate() }

    @inline(__always) func addBusy(_ us: UInt64) { vdv_store_relaxed_u64(storage, vdv_load_relaxed_u64(storage) &+ us) }
    @inline(__always) func addIdle(_ us: UInt64) {
        vdv_store_relaxed_u64(storage + 1, vdv_load_relaxed_u64(storage + 1) &+ us)
    }

    public var busyMicros: UInt64 { vdv_load_relaxed_u64(storage) }
    public var idleMicros: UInt64 { vdv_load_relaxed_u64(storage + 1) }
}
