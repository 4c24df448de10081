#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Virtio

/// Everything that goes into the guest's rx buffers: queued control and relayed packets first, then host
/// data of the connections that wait for buffers.
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
            if c.type == .stream && !hasEarly && !c.splitHeaders {
                switch pumpStreamBatch(c, rx, credit: credit) {
                case .progress: continue
                case .wouldBlock: return
                case .noBuffers:
                    waitForRx(c)
                    return
                case .eof: return hostClosed(c)
                case .hostError: return hostGone(c)
                case .splitHeader: c.splitHeaders = true
                case .failed: return
                }
            }
            guard let head = (try? rx.vq.popHead()) ?? nil else {
                waitForRx(c)
                return
            }
            do { try rx.vq.readChain(head: head, into: &rxSegs) } catch { return fail(error) }
            let room = Int(rxSegs.writableBytes) - VsockLayout.headerSize
            guard rxSegs.readableCount == 0, room > 0 else { return fail(VirtqueueError.tooManySegments) }
            let want = min(room, Int(credit))
            var h = header(for: c, op: .rw)
            var n = 0
            if hasEarly {
                n = min(want, c.early.count)
                c.early.withUnsafeBytes { _ = rxSegs.copyToWritable(offset: VsockLayout.headerSize, from: $0.baseAddress!, length: n) }
                c.early.removeFirst(n)
            } else if hasSeq {
                n = min(want, c.seqPending.count - c.seqPendingOffset)
                c.seqPending.withUnsafeBytes {
                    _ = rxSegs.copyToWritable(offset: VsockLayout.headerSize, from: $0.baseAddress! + c.seqPendingOffset, length: n)
                }
                c.seqPendingOffset += n
                if c.seqPendingOffset == c.seqPending.count {
                    h.flags = VsockLayout.seqEOM | VsockLayout.seqEOR
                    c.seqPending = []
                    c.seqPendingOffset = 0
                }
            } else {
                guard let k = rxSegs.slice(writable: true, offset: VsockLayout.headerSize, length: want, into: iov, outCapacity: 64) else {
                    rx.vq.unpop()
                    return
                }
                let r = Glibc.readv(c.fd, iov, Int32(k))
                if r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                    rx.vq.unpop()
                    return
                }
                if r <= 0 {
                    rx.vq.unpop()
                    return r == 0 ? hostClosed(c) : hostGone(c)
                }
                n = r
            }
            h.len = UInt32(n)
            c.txCnt &+= UInt32(n)
            h.fwdCnt = c.fwdCnt
            told(c, h)
            h.write(to: hdr)
            _ = rxSegs.copyToWritable(offset: 0, from: hdr, length: VsockLayout.headerSize)
            rx.complete(head: head, length: UInt32(VsockLayout.headerSize + n))
            rx.stats.add(.readBytes, UInt64(n))
        }
    }

    enum PumpResult { case progress, wouldBlock, noBuffers, eof, hostError, splitHeader, failed }

    /// Stream data: one readv fills several rx buffers at once (guests post small ones, 4 KiB for Linux),
    /// each buffer's header written after; buffers the read did not reach go back on the ring.
    func pumpStreamBatch(_ c: VsockConnection, _ rx: QueueBinding, credit: UInt32) -> PumpResult {
        var chains = 0, iovCount = 0, room = 0
        let maxBytes = Int(min(credit, 1 << 20))
        while chains < VsockEngine.batchChains && room < maxBytes && iovCount < 60 {
            guard let head = (try? rx.vq.popHead()) ?? nil else { break }
            do { try rx.vq.readChain(head: head, into: &rxSegs) } catch {
                fail(error)
                return .failed
            }
            let space = min(Int(rxSegs.writableBytes) - VsockLayout.headerSize, maxBytes - room)
            // The header must sit in the first writable segment to be filled in after the read.
            guard rxSegs.readableCount == 0, space > 0, rxSegs.iov[0].iov_len >= VsockLayout.headerSize,
                  let k = rxSegs.slice(writable: true, offset: VsockLayout.headerSize, length: space,
                                       into: iov + iovCount, outCapacity: 64 - iovCount) else {
                // Another buffer layout (virtio 2.6.4: any split is allowed): the one-buffer path copes.
                rx.vq.unpop()
                if chains == 0 { return .splitHeader }
                break
            }
            batchHeads[chains] = head
            batchHeaders[chains] = rxSegs.iov[0].iov_base!
            batchRoom[chains] = space
            iovCount += k
            room += space
            chains += 1
        }
        guard chains > 0 else { return .noBuffers }
        let r = Glibc.readv(c.fd, iov, Int32(iovCount))
        if r <= 0 {
            for _ in 0..<chains { rx.vq.unpop() }
            if r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return .wouldBlock }
            return r == 0 ? .eof : .hostError
        }
        var left = r
        var used = 0
        while used < chains && left > 0 {
            let n = min(left, batchRoom[used])
            var h = header(for: c, op: .rw)
            h.len = UInt32(n)
            told(c, h)
            h.write(to: batchHeaders[used])
            rx.complete(head: batchHeads[used], length: UInt32(VsockLayout.headerSize + n))
            left -= n
            used += 1
        }
        for _ in used..<chains { rx.vq.unpop() }
        c.txCnt &+= UInt32(r)
        rx.stats.add(.readBytes, UInt64(r))
        return .progress
    }
}
