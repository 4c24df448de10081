#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Virtio

/// Packets from the guest (tx queue): checked, then dispatched by op to the connection they belong to.
extension VsockEngine {
    func handleGuestPacket() {
        let stats = tx!.stats
        stats.add(.requests)
        guard txSegs.readableBytes >= UInt64(VsockLayout.headerSize),
              txSegs.copyReadable(offset: 0, into: hdr, length: VsockLayout.headerSize) else {
            stats.add(.errors)   // no header: nothing to answer
            return
        }
        let h = VsockHeader(from: hdr)
        let payload = txSegs.readableBytes - UInt64(VsockLayout.headerSize)
        // The guest cannot speak for another CID, claim more payload than it gave, or invent types.
        guard h.srcCID == guestCID, UInt64(h.len) <= payload, let type = VsockType(rawValue: h.type),
              let op = VsockOp(rawValue: h.op), op != .invalid else {
            stats.add(.errors)
            if h.srcCID == guestCID && h.op != VsockOp.rst.rawValue { refuse(h) }
            return
        }
        if type == .seqpacket && device.ackedFeatures & VsockFeature.seqpacket == 0 {
            stats.add(.errors)
            if op != .rst { refuse(h) }
            return
        }
        if h.dstCID != VsockLayout.hostCID {
            relayToSibling(h)
            return
        }
        let key = VsockConnKey(guestPort: h.srcPort, peerCID: VsockLayout.hostCID, peerPort: h.dstPort)
        let conn = connections[key]
        if op != .rw { device.trace("guest \(op) \(h.srcPort)->\(h.dstPort) flags=\(h.flags) conn=\(conn != nil)") }
        if let conn {
            conn.peerBufAlloc = h.bufAlloc
            conn.peerFwdCnt = h.fwdCnt
            if conn.pausedForCredit && conn.peerCredit > 0 {
                conn.pausedForCredit = false
                conn.creditRequestedAt = 0
                updateWatch(conn)
                pumpHostToGuest(conn)
            }
        }
        switch op {
        case .request:
            if conn != nil { refuse(h); return }
            connectToHost(h, type: type)
        case .response:
            guard let conn, conn.state == .connecting else { refuse(h); return }
            conn.state = .established
            let ok = Array("OK \(conn.key.peerPort)\n".utf8)
            _ = ok.withUnsafeBytes { Glibc.write(conn.fd, $0.baseAddress, $0.count) }
            updateWatch(conn)
            pumpHostToGuest(conn)
        case .rw:
            guard let conn, conn.state == .established, !conn.guestShutSend else { refuse(h); return }
            guestData(conn, h)
        case .creditUpdate:
            guard conn != nil else { queueReset(for: h); return }
        case .creditRequest:
            guard let conn else { queueReset(for: h); return }
            queueControl(conn, .creditUpdate)
        case .shutdown:
            guard let conn else { queueReset(for: h); return }
            if h.flags & VsockLayout.shutdownSend != 0 { conn.guestShutSend = true }
            if h.flags & VsockLayout.shutdownRcv != 0 {
                conn.guestShutRcv = true
                Glibc.shutdown(conn.fd, Int32(SHUT_RD))
            }
            updateWatch(conn)
            finishShutdowns(conn)
        case .rst:
            if let conn { close(conn) }
        case .invalid:
            break
        }
    }

    /// A packet that breaks the connection's rules: RST, and the connection (if any) is gone on both sides.
    func refuse(_ h: VsockHeader) {
        if h.dstCID == VsockLayout.hostCID,
           let c = connections[VsockConnKey(guestPort: h.srcPort, peerCID: VsockLayout.hostCID, peerPort: h.dstPort)] {
            close(c)
        }
        queueReset(for: h)
    }

    /// RST in answer to a packet with no connection behind it.
    func queueReset(for p: VsockHeader) {
        var h = VsockHeader()
        h.srcCID = p.dstCID
        h.dstCID = guestCID
        h.srcPort = p.dstPort
        h.dstPort = p.srcPort
        h.type = p.type
        h.op = VsockOp.rst.rawValue
        enqueue(h, [])
    }
}
