import CVdevd

/// Per-port counters: frames and bytes each way and drops by cause. Written by any poller serving the port
/// (atomic adds), read by anyone.
public final class PortCounters {
    public enum Counter: Int, CaseIterable {
        /// Frames and bytes the port's guest (or uplink) sent into the switch, and the switch delivered to it.
        case txFrames, txBytes, rxFrames, rxBytes
        /// Frames flooded (broadcast, multicast, unknown unicast) from this port.
        case flooded
        /// Dropped from this port's guest: source MAC other than mac=, a multicast source, an 802.1Q tag on an
        /// access port, a malformed virtio_net_hdr, shorter than an Ethernet header, longer than the MTU allows.
        case dropSpoofed, dropBadSource, dropTagged, dropBadHeader, dropRunt, dropOversized
        /// Dropped on the way to this port: no rx buffers posted, rx buffers too small without MRG_RXBUF,
        /// its backlog full, no rx queue running.
        case dropNoRxBuffers, dropRxTooSmall, dropBacklog, dropNoQueue
        /// GSO frames cut into TCP segments or IP fragments in software for this port (its driver did not take them
        /// whole), and ones that could not be (not plain TCP or UDP over IPv4/IPv6).
        case segmented, dropUnsegmentable
    }
    private let storage = UnsafeMutablePointer<UInt64>.allocate(capacity: Counter.allCases.count)
    public init() { storage.initialize(repeating: 0, count: Counter.allCases.count) }
    deinit { storage.deallocate() }

    @inline(__always) public func add(_ c: Counter, _ n: UInt64 = 1) { vdv_add_relaxed_u64(storage + c.rawValue, n) }
    public func get(_ c: Counter) -> UInt64 { vdv_load_relaxed_u64(storage + c.rawValue) }
    public var snapshot: [String: UInt64] {
        var d: [String: UInt64] = [:]
        for c in Counter.allCases { d["\(c)"] = get(c) }
        return d
    }
}
