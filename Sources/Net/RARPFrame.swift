/// A RARP request announcing a MAC (RFC 903), as switches expect after a VM moved: broadcast, sender and target
/// hardware address the guest's, no protocol addresses. Padded to Ethernet's 60-byte minimum.
enum RARPFrame {
    static let length = 60

    static func write(mac: MACAddress, to p: UnsafeMutableRawPointer) {
        var b = [UInt8](repeating: 0, count: length)
        let m = mac.octets
        for i in 0..<6 { b[i] = 0xff }
        b.replaceSubrange(6..<12, with: m)
        b[12] = 0x80; b[13] = 0x35          // EtherType RARP
        b[14] = 0x00; b[15] = 0x01          // hardware: Ethernet
        b[16] = 0x08; b[17] = 0x00          // protocol: IPv4
        b[18] = 6; b[19] = 4                // address lengths
        b[20] = 0x00; b[21] = 0x03          // op: reverse request
        b.replaceSubrange(22..<28, with: m) // sender hardware address
        b.replaceSubrange(32..<38, with: m) // target hardware address
        b.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: length) }
    }
}
