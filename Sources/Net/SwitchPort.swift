/// One port of a switch: a guest's NIC or the uplink. Its rx endpoints are the queues frames are delivered to.
public final class SwitchPort {
    public let name: String
    /// Access VLAN: frames of this port are switched only among ports of the same VLAN (0: untagged domain).
    public let vlan: UInt16
    /// When set, the only source MAC this port's guest may use (and where the switch knows it from the start).
    public let fixedMAC: MACAddress?
    public let counters = PortCounters()
    /// Index in the switch's port table; -1 once removed.
    var index = -1
    /// Rx endpoints running now (switch lock). The array owns them; `endpointTable` mirrors it with unretained
    /// references, which the forwarding path reads without reference counting.
    private(set) var endpoints: [RxEndpoint] = []
    let endpointTable = UnsafeMutablePointer<Unmanaged<RxEndpoint>>.allocate(capacity: SwitchPort.maxEndpoints)
    private(set) var endpointCount = 0
    /// One per rx queue (16 pairs at most) or uplink; room to spare.
    static let maxEndpoints = 64

    init(name: String, vlan: UInt16, fixedMAC: MACAddress?) {
        self.name = name
        self.vlan = vlan
        self.fixedMAC = fixedMAC
    }

    deinit { endpointTable.deallocate() }

    /// Switch lock held.
    func addEndpoint(_ e: RxEndpoint) -> Bool {
        guard endpoints.count < SwitchPort.maxEndpoints else { return false }
        endpoints.append(e)
        mirrorEndpoints()
        return true
    }

    /// Switch lock held.
    func removeEndpoint(_ e: RxEndpoint) {
        endpoints.removeAll { $0 === e }
        mirrorEndpoints()
    }

    private func mirrorEndpoints() {
        for (i, e) in endpoints.enumerated() { endpointTable[i] = Unmanaged.passUnretained(e) }
        endpointCount = endpoints.count
    }
}
