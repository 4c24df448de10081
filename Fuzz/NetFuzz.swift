// libFuzzer target for what the switch does to a hostile guest's frame on its way to a receiver that cannot take
// it as sent: software TCP segmentation (TCPSegmenter), UDP fragmentation (UDPFragmenter) and checksum completion
// (InternetChecksum). The input is a virtio_net_hdr's fields and a frame, split over several sender buffers
// exactly as long as their bytes, so AddressSanitizer catches any read past a buffer. Every piece handed to the
// receiver is read whole and must add up to the length it claims. Built with Sources/Virtio and Sources/Net by
// scripts/fuzz.sh.
#if canImport(Glibc)
import Glibc
#endif
import CVdevd

private let table = NetFrameTable(count: 1)
private let segmenter = TCPSegmenter()
private let fragmenter = UDPFragmenter()
private let sink = UnsafeMutableRawPointer.allocate(byteCount: 1 << 17, alignment: 16)

/// Reads every byte of a frame handed on (as the receiver's copy would) and checks its description.
private func consume(_ f: NetFrameRef) {
    var total = 0
    for i in 0..<f.pointee.iovCount {
        let seg = f.pointee.iov[i]
        precondition(total + seg.iov_len <= 1 << 17, "a piece longer than any frame")
        sink.advanced(by: total).copyMemory(from: seg.iov_base!, byteCount: seg.iov_len)
        total += seg.iov_len
    }
    precondition(total == f.pointee.length, "piece of \(f.pointee.length) bytes described by \(total)")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 10 + 14 else { return 0 }
    var h = NetHeader()
    let gsoTypes: [UInt8] = [NetHeader.gsoNone, NetHeader.gsoTCPv4, NetHeader.gsoUDP, NetHeader.gsoTCPv6]
    h.gsoType = gsoTypes[Int(data[0] & 3)] | (data[0] & 0x80)
    h.flags = data[1] & NetHeader.needsCsum
    h.gsoSize = UInt16(data[2]) | UInt16(data[3]) << 8
    h.csumStart = UInt16(data[4]) | UInt16(data[5] & 0x7) << 8
    h.csumOffset = UInt16(data[6] & 0x3f)
    h.hdrLen = UInt16(data[7])
    let pieces = Int(data[8] % 8) + 1
    let cut = Int(data[9])
    let length = size - 10
    // The frame in `pieces` buffers of their exact sizes (the last takes the rest).
    let f = table.frames
    var buffers: [UnsafeMutableRawPointer] = []
    var at = 0
    for i in 0..<pieces where at < length {
        let n = i == pieces - 1 ? length - at : min(length - at, max(1, (cut * (i + 1)) % 97 + 1))
        let b = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 1)
        b.copyMemory(from: data + 10 + at, byteCount: n)
        f.pointee.iov[buffers.count] = iovec(iov_base: b, iov_len: n)
        buffers.append(b)
        at += n
    }
    defer { for b in buffers { b.deallocate() } }
    f.pointee.iovCount = buffers.count
    f.pointee.length = length
    f.pointee.header = h
    f.holdBySender()

    // What the receive path does for a driver without GUEST_TSO/GUEST_UFO/GUEST_CSUM (the sender's header
    // checks, as NetTxQueue.validate makes them, are not assumed: the segmenters must cope with any header).
    let gso = h.gsoType & ~NetHeader.gsoECN
    if gso == NetHeader.gsoUDP {
        _ = fragmenter.fragment(f) { consume($0) }
    } else if gso != NetHeader.gsoNone {
        _ = segmenter.segment(f) { consume($0) }
    }
    if h.flags & NetHeader.needsCsum != 0 && Int(h.csumStart) + Int(h.csumOffset) + 2 <= length {
        var c = InternetChecksum()
        c.add(frame: f, from: Int(h.csumStart))
        _ = c.result
    }
    consume(f)
    f.releaseFrame()
    return 0
}
