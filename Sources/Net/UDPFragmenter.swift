#if canImport(Glibc)
import Glibc
#endif

/// Software UDP fragmentation offload (UFO) for a receiver that did not negotiate GUEST_UFO: a GSO_UDP frame
/// (one UDP datagram larger than the MTU, its checksum left partial) gets its UDP checksum completed over the
/// whole datagram and is cut into IP fragments of gso_size payload bytes (rounded down to a multiple of 8):
/// IPv4 fragments share the datagram's id, with MF and offsets set and header checksums recomputed; IPv6 ones
/// get a fragment header with an id of the switch's own. Headers are rebuilt in preallocated buffers; payload
/// bytes are still copied once, from the sender.
final class UDPFragmenter {
    /// Ethernet + IPv6 + fragment header, the largest header a fragment carries.
    static let maxHeaders = 14 + 40 + 8
    private let headers = UnsafeMutableRawPointer.allocate(byteCount: UDPFragmenter.maxHeaders, alignment: 8)
    private let original = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 8)
    /// The UDP header with its checksum completed (the first fragment carries it).
    private let udp = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
    private let fragment = NetFrameTable(count: 1)
    private var nextIPv6ID = UInt32.random(in: 0...UInt32.max)

    deinit {
        headers.deallocate()
        original.deallocate()
        udp.deallocate()
    }

    /// Calls `deliver` with each fragment of f; false if the frame is not a UDP datagram it can fragment (dropped):
    /// IPv4 options or DF set, IPv6 extension headers, a partial checksum that is not UDP's, gso_size under 8.
    func fragment(_ f: NetFrameRef, _ deliver: (NetFrameRef) throws -> Void) rethrows -> Bool {
        let length = f.pointee.length
        let have = copyFromFrame(f, offset: 0, into: original, length: min(length, 64))
        guard have >= 14 + 20 + 8 else { return false }
        let b = original
        func u8(_ o: Int) -> Int { Int(b.load(fromByteOffset: o, as: UInt8.self)) }
        func be16(_ o: Int) -> Int { u8(o) << 8 | u8(o + 1) }
        let v4: Bool
        let l4: Int
        switch be16(12) {
        case 0x0800:
            // No options (their copy rules differ per fragment), UDP, and fragmenting allowed (DF clear).
            guard u8(14) == 0x45, u8(14 + 9) == 17, be16(14 + 6) & 0x4000 == 0 else { return false }
            v4 = true
            l4 = 14 + 20
        case 0x86dd:
            guard u8(14 + 6) == 17 else { return false }
            v4 = false
            l4 = 14 + 40
        default:
            return false
        }
        let h = f.pointee.header
        let per = Int(h.gsoSize) & ~7
        guard l4 + 8 <= have, l4 + 8 < length, per >= 8,
              h.flags & NetHeader.needsCsum != 0, Int(h.csumStart) == l4, h.csumOffset == 6 else { return false }
        // The UDP checksum over the whole datagram (the field holds the pseudo-header sum); 0 is sent as 0xffff.
        var c = InternetChecksum()
        c.add(frame: f, from: l4)
        let sum = c.result == 0 ? 0xffff : c.result
        udp.copyMemory(from: original + l4, byteCount: 8)
        storeBE16(udp, 6, Int(sum))

        // Fragments of the IP payload (UDP header and data), `per` bytes each but the last.
        let payload = length - l4
        let id = nextIPv6ID
        if !v4 { nextIPv6ID &+= 1 }
        let hdrs = v4 ? l4 : l4 + 8
        let s = fragment.frames
        var off = 0
        while off < payload {
            let n = min(per, payload - off)
            let more = off + n < payload
            headers.copyMemory(from: original, byteCount: l4)
            let o = headers
            if v4 {
                storeBE16(o, 16, 20 + n)
                storeBE16(o, 20, (off >> 3) | (more ? 0x2000 : 0))
                storeBE16(o, 24, 0)
                var ck = InternetChecksum()
                ck.add(o + 14, 20)
                storeBE16(o, 24, Int(ck.result))
            } else {
                // RFC 8200, 4.5: the fragment header follows the IPv6 header; next header moves into it.
                storeBE16(o, 18, 8 + n)
                o.storeBytes(of: UInt8(44), toByteOffset: 20, as: UInt8.self)
                o.storeBytes(of: UInt8(17), toByteOffset: l4, as: UInt8.self)
                o.storeBytes(of: UInt8(0), toByteOffset: l4 + 1, as: UInt8.self)
                storeBE16(o, l4 + 2, off | (more ? 1 : 0))
                storeBE16(o, l4 + 4, Int(id >> 16))
                storeBE16(o, l4 + 6, Int(id & 0xffff))
            }
            s.pointee.iov[0] = iovec(iov_base: o, iov_len: hdrs)
            var k = 1
            var from = l4 + off, count = n
            if off == 0 {
                s.pointee.iov[1] = iovec(iov_base: udp, iov_len: 8)
                k = 2
                from += 8
                count -= 8
            }
            guard let m = sliceFrame(f, offset: from, length: count, into: s.pointee.iov + k,
                                     capacity: NetFrame.maxSegments - k) else { return false }
            s.pointee.iovCount = k + m
            s.pointee.length = hdrs + n
            s.pointee.header = NetHeader()
            try deliver(s)
            off += n
        }
        return true
    }
}
