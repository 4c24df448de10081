#if canImport(Glibc)
import Glibc
#endif

/// Software TCP segmentation (what a NIC's TSO does) for a receiver that did not negotiate GUEST_TSO4/6:
/// a GSO frame becomes gso_size-payload frames, each with its own IP length (and IPv4 id and header checksum),
/// TCP sequence number, flags (FIN/PSH on the last only, CWR on the first only) and a complete TCP checksum.
/// Headers are rebuilt in one preallocated buffer; payload bytes are still copied once, from the sender.
final class TCPSegmenter {
    static let maxHeaders = 128
    private let headers = UnsafeMutableRawPointer.allocate(byteCount: TCPSegmenter.maxHeaders, alignment: 8)
    private let original = UnsafeMutableRawPointer.allocate(byteCount: TCPSegmenter.maxHeaders, alignment: 8)
    private let segment = NetFrameTable(count: 1)

    deinit {
        headers.deallocate()
        original.deallocate()
    }

    /// Calls `deliver` with each segment of f; false if the frame is not a TCP packet it can cut (dropped).
    func segment(_ f: NetFrameRef, _ deliver: (NetFrameRef) throws -> Void) rethrows -> Bool {
        let length = f.pointee.length
        let have = copyFromFrame(f, offset: 0, into: original, length: min(length, TCPSegmenter.maxHeaders))
        guard have >= 14 + 20 else { return false }
        let b = original
        func u8(_ o: Int) -> Int { Int(b.load(fromByteOffset: o, as: UInt8.self)) }
        func be16(_ o: Int) -> Int { u8(o) << 8 | u8(o + 1) }
        let etherType = be16(12)
        let v4: Bool
        let l4: Int
        switch etherType {
        case 0x0800:
            let ihl = (u8(14) & 0xf) * 4
            guard ihl >= 20, u8(14 + 9) == 6 else { return false }
            v4 = true
            l4 = 14 + ihl
        case 0x86dd:
            guard u8(14 + 6) == 6 else { return false }   // no extension headers
            v4 = false
            l4 = 14 + 40
        default:
            return false
        }
        guard l4 + 20 <= have else { return false }
        let doff = (u8(l4 + 12) >> 4) * 4
        let hdrs = l4 + doff
        let mss = Int(f.pointee.header.gsoSize)
        guard doff >= 20, hdrs <= have, hdrs < length, mss > 0 else { return false }
        let payload = length - hdrs
        let seq0 = UInt32(be16(l4 + 4)) << 16 | UInt32(be16(l4 + 6))
        let flags0 = u8(l4 + 13)
        let id0 = v4 ? be16(18) : 0
        let s = segment.frames
        var off = 0
        var i = 0
        while off < payload {
            let n = min(mss, payload - off)
            let last = off + n == payload
            headers.copyMemory(from: original, byteCount: hdrs)
            let h = headers
            if v4 {
                storeBE16(h, 16, hdrs - 14 + n)
                storeBE16(h, 18, (id0 + i) & 0xffff)
                storeBE16(h, 24, 0)
                var c = InternetChecksum()
                c.add(h + 14, l4 - 14)
                storeBE16(h, 24, Int(c.result))
            } else {
                storeBE16(h, 18, hdrs - 54 + n)
            }
            let seq = seq0 &+ UInt32(off)
            storeBE16(h, l4 + 4, Int(seq >> 16))
            storeBE16(h, l4 + 6, Int(seq & 0xffff))
            var fl = flags0
            if !last { fl &= ~0x09 }      // FIN, PSH
            if i > 0 { fl &= ~0x80 }      // CWR
            h.storeBytes(of: UInt8(fl), toByteOffset: l4 + 13, as: UInt8.self)
            storeBE16(h, l4 + 16, 0)
            // The segment: rebuilt headers, then its slice of the sender's payload.
            s.pointee.iov[0] = iovec(iov_base: h, iov_len: hdrs)
            guard let k = sliceFrame(f, offset: hdrs + off, length: n, into: s.pointee.iov + 1, capacity: NetFrame.maxSegments - 1) else {
                return false
            }
            s.pointee.iovCount = 1 + k
            s.pointee.length = hdrs + n
            s.pointee.header = NetHeader()
            // TCP checksum over the pseudo-header, the TCP header and the payload.
            var c = InternetChecksum()
            let tcpLength = doff + n
            if v4 { c.add(h + 26, 8) } else { c.add(h + 22, 32) }
            var tail: (UInt8, UInt8, UInt8, UInt8) = (0, 6, UInt8(truncatingIfNeeded: tcpLength >> 8), UInt8(truncatingIfNeeded: tcpLength))
            withUnsafeBytes(of: &tail) { c.add($0.baseAddress!, 4) }
            if !v4 {
                var hi: (UInt8, UInt8) = (UInt8(truncatingIfNeeded: tcpLength >> 24), UInt8(truncatingIfNeeded: tcpLength >> 16))
                withUnsafeBytes(of: &hi) { c.add($0.baseAddress!, 2) }
            }
            c.add(h + l4, doff)
            c.add(frame: s, from: hdrs, count: n)
            storeBE16(h, l4 + 16, Int(c.result))
            try deliver(s)
            off += n
            i += 1
        }
        return true
    }
}
