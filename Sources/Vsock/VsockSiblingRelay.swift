#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Virtio

/// Guest-to-guest: packets for a sibling's CID go to its rx queue.
extension VsockEngine {
    /// Guest-to-guest: packets addressed to a sibling's CID go to that sibling's rx queue unchanged.
    func relayToSibling(_ h: VsockHeader) {
        guard let sibling = device.registry.sibling(of: device, cid: h.dstCID)?.engine, sibling.rx != nil else {
            if h.op != VsockOp.rst.rawValue { queueReset(for: h) }
            return
        }
        // Linux never sends more than 64 KiB in one packet (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE); neither may a relay.
        guard h.len <= VsockOptions.maxRelayedPacket else {
            tx?.stats.add(.errors)
            if h.op != VsockOp.rst.rawValue { queueReset(for: h) }
            return
        }
        var payload = [UInt8](repeating: 0, count: Int(h.len))
        if h.len > 0 { payload.withUnsafeMutableBytes { _ = txSegs.copyReadable(offset: VsockLayout.headerSize, into: $0.baseAddress!, length: Int(h.len)) } }
        tx?.stats.add(.writtenBytes, UInt64(h.len))
        if !sibling.enqueue(h, payload) && h.op != VsockOp.rst.rawValue { queueReset(for: h) }
    }
}
