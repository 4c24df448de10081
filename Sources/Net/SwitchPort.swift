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
    /// Rx endpoints running now (switch lock).
    var endpoints: [RxEndpoint] = []

    init(name: String, vlan: UInt16, fixedMAC: MACAddress?) {
        self.name = name
        self.vlan = vlan
        self.fixedMAC = fixedMAC
    }
}
