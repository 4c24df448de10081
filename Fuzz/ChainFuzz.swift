// libFuzzer target for the split-virtqueue device side: the input is guest memory as a hostile driver would
// lay it out (descriptor table, avail ring, indirect tables, buffers) plus a few knobs. Built together with
// Sources/Virtio by scripts/fuzz.sh; AddressSanitizer catches any access outside the mapped guest RAM.
#if canImport(Glibc)
import Glibc
#endif
import CVdevd

private let ramSize = 1 << 16
private let ramGPA: UInt64 = 0x10000

private let region: MemoryRegion = {
    let fd = vdv_memfd_create("fuzz-ram")
    precondition(fd >= 0 && ftruncate(fd, off_t(ramSize)) == 0)
    let r = try! MemoryRegion(fd: fd, guestAddress: ramGPA, size: UInt64(ramSize), userAddress: 0x7000_0000,
                              mmapOffset: 0)
    close(fd)
    return r
}()
private let memory = GuestMemory(regions: [region])
private var segments = ChainSegments(capacity: 64)
private let scratch = UnsafeMutableRawPointer.allocate(byteCount: 1 << 16, alignment: 16)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 4 else { return 0 }
    // Knobs: queue size 2^(1...8), features, where the rings sit, the device's starting avail index.
    let qsize = UInt32(1) << UInt32(data[0] % 8 + 1)
    let features = (data[1] & 1 != 0 ? VirtioFeature.ringIndirectDesc : 0) | (data[1] & 2 != 0 ? VirtioFeature.ringEventIdx : 0)
    let ringBase = ramGPA + UInt64(data[2] & 0x3f) * 16
    let lastAvail = UInt16(data[3]) | UInt16(data[1] & 0xf0) << 4
    // The rest is guest RAM, repeated to fill it.
    let body = UnsafeRawBufferPointer(start: data + 4, count: size - 4)
    var off = 0
    while off < ramSize && !body.isEmpty {
        let n = min(body.count, ramSize - off)
        (region.host + off).copyMemory(from: body.baseAddress!, byteCount: n)
        off += n
    }
    let desc = ringBase
    let avail = (desc + 16 * UInt64(qsize) + 1) & ~1
    let used = (avail + 6 + 2 * UInt64(qsize) + 3) & ~3
    let addrs = VringAddresses(descriptorTable: desc, availRing: avail, usedRing: used, guestPhysical: true)
    guard let vq = try? SplitVirtqueue(index: 0, size: qsize, addresses: addrs, memory: memory, features: features,
                                       lastAvailIdx: lastAvail) else { return 0 }
    var rounds = 0
    while rounds < 2 * Int(qsize) {
        rounds += 1
        guard let head = (try? vq.popHead()) ?? nil else { break }
        do {
            try vq.readChain(head: head, into: &segments)
        } catch {
            continue
        }
        // Use the segments the way devices do: header copy, status byte, data slices.
        _ = segments.copyReadable(offset: Int(data[2]), into: scratch, length: min(44, Int(segments.readableBytes)))
        segments.lastWritableByte?.pointee = 0
        let w = Int(min(segments.writableBytes, 1 << 15))
        if w > 1 { _ = segments.slice(writable: true, offset: 1, length: w - 1, into: scratch.assumingMemoryBound(to: iovec.self), outCapacity: 64) }
        _ = segments.copyToWritable(offset: 0, from: scratch, length: min(w, 4096))
        vq.pushUsed(head: head, length: UInt32(w))
    }
    vq.publishUsed()
    _ = vq.needsInterrupt()
    vq.enableNotifications()
    return 0
}
