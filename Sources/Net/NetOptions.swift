/// What a vhost-user-net export asks of its device and its switch port.
public struct NetOptions: Equatable {
    public var id: String
    public var switchName: String
    /// The port is known at this MAC from the start and drops frames from its guest with any other source.
    public var mac: MACAddress?
    public var queuePairs: Int = 1
    public var mtu: Int = 1500
    /// 802.1Q access VLAN (untagged on the port); 0 means the switch's untagged domain.
    public var vlan: UInt16 = 0
    public var queueSize: UInt32 = 256

    public static let maxQueuePairs = 16

    public init(id: String, switchName: String) {
        self.id = id
        self.switchName = switchName
    }
}

/// A 48-bit Ethernet address, kept in the low bits of a UInt64 (first octet most significant).
public struct MACAddress: Hashable, CustomStringConvertible {
    public let value: UInt64

    public init(value: UInt64) { self.value = value & 0xffff_ffff_ffff }

    public init?(_ text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var v: UInt64 = 0
        for p in parts {
            guard p.count == 2, let b = UInt8(p, radix: 16) else { return nil }
            v = v << 8 | UInt64(b)
        }
        value = v
    }

    /// Reads six octets at p.
    @inline(__always)
    public init(at p: UnsafeRawPointer) {
        var v: UInt64 = 0
        for i in 0..<6 { v = v << 8 | UInt64(p.load(fromByteOffset: i, as: UInt8.self)) }
        value = v
    }

    public var isMulticast: Bool { value & (1 << 40) != 0 }
    public static let broadcast = MACAddress(value: 0xffff_ffff_ffff)

    public var octets: [UInt8] { (0..<6).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64(5 - $0))) } }

    public var description: String { octets.map { String($0, radix: 16).leftPadded(2) }.joined(separator: ":") }
}

extension String {
    func leftPadded(_ n: Int) -> String { count >= n ? self : String(repeating: "0", count: n - count) + self }
}
