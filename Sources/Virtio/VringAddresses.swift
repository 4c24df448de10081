/// Where a split ring's three parts live, as the frontend gave them (vhost-user: frontend virtual addresses;
/// VDUSE: IOVAs). Translated through GuestMemory when the queue starts or the memory table changes.
public struct VringAddresses: Equatable {
    public var descriptorTable: UInt64
    public var availRing: UInt64
    public var usedRing: UInt64
    /// True when the addresses are guest-physical (VDUSE, tests), false for frontend virtual addresses.
    public var guestPhysical: Bool

    public init(descriptorTable: UInt64, availRing: UInt64, usedRing: UInt64, guestPhysical: Bool = false) {
        self.descriptorTable = descriptorTable
        self.availRing = availRing
        self.usedRing = usedRing
        self.guestPhysical = guestPhysical
    }
}
