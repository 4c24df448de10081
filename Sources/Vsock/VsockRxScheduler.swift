#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Virtio

/// Everything that goes into the guest's rx buffers, scheduled in one place (fillRx): queued control and
/// relayed packets first (flushToGuest), then host data of the connections that wait for buffers
/// (pumpHostToGuest -> fillChains, one writer whether the bytes come from the socket or are already held).
extension VsockEngine {
    /// The one way into rx buffers: queued packets first, in order, then the connections waiting for
    /// buffers, in turn (each reads its host socket for as much as its credit and the buffers allow).
    @discardableResult
    func fillRx() -> Bool {
        var did = flushToGuest()
        guard pendingStart == pending.count, !stalled.isEmpty, let rx, (try? rx.vq.pendingCount()) ?? 0 > 0 else { return did }
        let waiting = stalled
        stalled.removeAll()
        for c in waiting where connections[c.key] === c {
            c.pausedForRx = false
            updateWatch(c)
            pumpHostToGuest(c)
        }
        did = true
        return did
    }

    @discardableResult
    func enqueue(_ h: VsockHeader, _ payload: [UInt8]) -> Bool {
        guard pending.count - pendingStart < VsockOptions.maxPendingPackets,
              pendingBytes + payload.count <= VsockOptions.maxPendingBytes else {
            device.log("guest is not taking packets (\(pending.count - pendingStart) waiting); dropping")
            return false
        }
        pending.append((h, payload, 0))
        pendingBytes += payload.count
        _ = flushToGuest()
        return true
    }

    /// Sends waiting packets into rx buffers; payloads larger than a buffer are split (EOM on the last part).
    @discardableResult
    func flushToGuest() -> Bool {
        guard let rx else { return false }
        var did = false
        while pendingStart < pending.count {
            let (h, payload, sent) = pending[pendingStart]
            guard let head = (try? rx.vq.popHead()) ?? nil else { break }
            do { try rx.vq.readChain(head: head, into: &rxSegs) } catch {
                fail(error)
                return did
            }
            let room = max(0, Int(rxSegs.writableBytes) - VsockLayout.headerSize)
            let n = min(room, payload.count - sent)
            var out = h
            out.len = UInt32(n)
            // A packet of a host connection carries the counters of now, not of when it was queued: one
            // queued behind data that went first would otherwise take back credit the guest was given.
            if h.srcCID == VsockLayout.hostCID,
               let c = connections[VsockConnKey(guestPort: h.dstPort, peerCID: h.srcCID, peerPort: h.srcPort)] {
                out.fwdCnt = c.fwdCnt
                out.bufAlloc = c.bufAlloc
                told(c, out)
                if h.op == VsockOp.creditUpdate.rawValue { c.creditUpdateQueued = false }
            }
            if sent + n < payload.count { out.flags &= ~(VsockLayout.seqEOM | VsockLayout.seqEOR) }
            out.write(to: hdr)
            let hn = rxSegs.copyToWritable(offset: 0, from: hdr, length: VsockLayout.headerSize)
            if n > 0 {
                payload.withUnsafeBytes { _ = rxSegs.copyToWritable(offset: VsockLayout.headerSize, from: $0.baseAddress! + sent, length: n) }
            }
            rx.logWritten(rxSegs, bytes: hn + n)
            rx.complete(head: head, length: UInt32(hn + n))
            did = true
            if sent + n < payload.count {
                pending[pendingStart].2 = sent + n
            } else {
                pendingBytes -= payload.count
                pending[pendingStart] = (h, [], 0)
                pendingStart += 1
            }
        }
        // Sent entries are dropped once they are half of the array, so it never grows with what went out.
        if pendingStart == pending.count {
            pending.removeAll(keepingCapacity: true)
            pendingStart = 0
        } else if pendingStart > 64 && pendingStart * 2 > pending.count {
            pending.removeFirst(pendingStart)
            pendingStart = 0
        }
        return did
    }

    /// No rx buffer for `c` now: it stops reading its host socket until the guest gives buffers.
    func waitForRx(_ c: VsockConnection) {
        if !c.pausedForRx { stalled.append(c) }
        c.pausedForRx = true
        updateWatch(c)
    }

    /// Host socket has data (or closed): read it straight into guest rx buffers as credit allows.
    func pumpHostToGuest(_ c: VsockConnection) {
        guard let rx, c.state == .established, !c.guestShutRcv, !c.hostEOF else { return }
        // Control packets go first: data must not overtake a RESPONSE or a CREDIT_UPDATE queued before it.
        if pendingStart < pending.count {
            flushToGuest()
            if pendingStart < pending.count {
                waitForRx(c)
                return
            }
        }
        var rounds = 0
        while rounds < 64, connections[c.key] === c {
            rounds += 1
            let credit = c.peerCredit
            let hasEarly = !c.early.isEmpty
            let hasSeq = c.seqPendingOffset < c.seqPending.count
            if credit == 0 {
                c.pausedForCredit = true
                askForCredit(c)
                updateWatch(c)
                return
            }
            if c.type == .seqpacket && !hasSeq && !hasEarly {
                switch readSeqpacketMessage(c) {
                case .message: continue
                case .empty:
                    var h = header(for: c, op: .rw)
                    h.flags = VsockLayout.seqEOM | VsockLayout.seqEOR
                    enqueue(h, [])
                    continue
                case .wouldBlock: return
                case .eof: return hostClosed(c)
                case .failed: return hostGone(c)
                }
            }
            // Bytes already held (the CONNECT line's leftovers, a SEQPACKET message) go first, then the socket.
            let source: HostBytes = hasEarly ? .early : hasSeq ? .message : .socket
            switch fillChains(c, rx, credit: credit, from: source) {
            case .progress: continue
            case .wouldBlock: return
            case .noBuffers:
                waitForRx(c)
                return
            case .eof: return hostClosed(c)
            case .hostError: return hostGone(c)
            case .failed: return
            }
        }
    }

    enum PumpResult { case progress, wouldBlock, noBuffers, eof, hostError, failed }

    /// Where a connection's next bytes for the guest come from.
    enum HostBytes { case socket, early, message }

    /// A connection's data into rx buffers: as many chains as credit allows (guests post small buffers,
    /// 4 KiB for Linux) filled by one readv from the host socket, or by one copy of bytes already held, each
    /// chain's header written after. A chain whose header does not sit whole in its first segment (virtio
    /// 2.6.4: any layout is allowed) goes alone, its header written through the chain's segments. Chains the
    /// data did not reach go back on the ring.
    func fillChains(_ c: VsockConnection, _ rx: QueueBinding, credit: UInt32, from source: HostBytes) -> PumpResult {
        var chains = 0, iovCount = 0, room = 0
        var maxBytes = Int(min(credit, 1 << 20))
        switch source {
        case .socket: break
        case .early: maxBytes = min(maxBytes, c.early.count)
        case .message: maxBytes = min(maxBytes, c.seqPending.count - c.seqPendingOffset)
        }
        var alone = false
        while chains < VsockEngine.batchChains && room < maxBytes && iovCount < 60 && !alone {
            guard let head = (try? rx.vq.popHead()) ?? nil else { break }
            do { try rx.vq.readChain(head: head, into: &rxSegs) } catch {
                fail(error)
                return .failed
            }
            let space = min(Int(rxSegs.writableBytes) - VsockLayout.headerSize, maxBytes - room)
            let split = rxSegs.iov[0].iov_len < VsockLayout.headerSize
            guard rxSegs.readableCount == 0, space > 0, !(split && chains > 0),
                  let k = rxSegs.slice(writable: true, offset: VsockLayout.headerSize, length: space,
                                       into: iov + iovCount, outCapacity: 64 - iovCount) else {
                rx.vq.unpop()
                if chains > 0 { break }
                // A chain we cannot use at all: no room for a header and data, or device-readable parts.
                fail(VirtqueueError.tooManySegments)
                return .failed
            }
            alone = split
            batchHeads[chains] = head
            batchHeaders[chains] = rxSegs.iov[0].iov_base!
            batchRoom[chains] = space
            iovCount += k
            room += space
            chains += 1
        }
        guard chains > 0 else { return .noBuffers }
        var r = 0
        switch source {
        case .socket:
            r = Glibc.readv(c.fd, iov, Int32(iovCount))
            if r <= 0 {
                for _ in 0..<chains { rx.vq.unpop() }
                if r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return .wouldBlock }
                return r == 0 ? .eof : .hostError
            }
        case .early:
            r = c.early.withUnsafeBytes { copyToIov($0.baseAddress!, room, iovCount) }
            c.early.removeFirst(r)
        case .message:
            r = c.seqPending.withUnsafeBytes { copyToIov($0.baseAddress! + c.seqPendingOffset, room, iovCount) }
            c.seqPendingOffset += r
        }
        // The last fragment of a SEQPACKET message carries EOM (5.10.6.6.1).
        let eom = source == .message && c.seqPendingOffset == c.seqPending.count
        if eom {
            c.seqPending = []
            c.seqPendingOffset = 0
        }
        if rx.dirtyLog != nil {
            // Live migration: the data went into these buffers (some may be given back below: marking them
            // too is harmless).
            for i in 0..<iovCount { rx.logWrite(iov[i].iov_base!, length: iov[i].iov_len) }
        }
        var left = r
        var used = 0
        while used < chains && left > 0 {
            let n = min(left, batchRoom[used])
            var h = header(for: c, op: .rw)
            h.len = UInt32(n)
            if eom && left == n { h.flags = VsockLayout.seqEOM | VsockLayout.seqEOR }
            told(c, h)
            if alone {
                // (alone means one chain, still described by rxSegs)
                h.write(to: hdr)
                _ = rxSegs.copyToWritable(offset: 0, from: hdr, length: VsockLayout.headerSize)
                rx.logWritten(rxSegs, bytes: VsockLayout.headerSize)
            } else {
                h.write(to: batchHeaders[used])
                rx.logWrite(batchHeaders[used], length: VsockLayout.headerSize)
            }
            rx.complete(head: batchHeads[used], length: UInt32(VsockLayout.headerSize + n))
            left -= n
            used += 1
        }
        for _ in used..<chains { rx.vq.unpop() }
        c.txCnt &+= UInt32(r)
        rx.stats.add(.readBytes, UInt64(r))
        return .progress
    }

    /// Copies `count` bytes into the first `iovCount` entries of `iov`, in order; returns how many fitted.
    private func copyToIov(_ src: UnsafeRawPointer, _ count: Int, _ iovCount: Int) -> Int {
        var done = 0
        var i = 0
        while done < count && i < iovCount {
            let n = min(count - done, iov[i].iov_len)
            iov[i].iov_base.copyMemory(from: src + done, byteCount: n)
            done += n
            i += 1
        }
        return done
    }
}
