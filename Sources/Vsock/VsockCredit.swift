#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Virtio

/// Credit (virtio 1.3, 5.10.6.3): what we tell the guest of our buffer, and asking it for its own.
extension VsockEngine {
    func header(for c: VsockConnection, op: VsockOp) -> VsockHeader {
        var h = VsockHeader()
        h.srcCID = c.key.peerCID
        h.dstCID = guestCID
        h.srcPort = c.key.peerPort
        h.dstPort = c.key.guestPort
        h.type = c.type.rawValue
        h.op = op.rawValue
        h.bufAlloc = c.bufAlloc
        h.fwdCnt = c.fwdCnt
        return h
    }

    /// A header for `c` is in an rx buffer: the guest will know this fwd_cnt (and nothing newer) from now.
    @inline(__always)
    func told(_ c: VsockConnection, _ h: VsockHeader) {
        c.advertisedFwdCnt = h.fwdCnt
    }

    func queueControl(_ c: VsockConnection, _ op: VsockOp) {
        var h = header(for: c, op: op)
        if op == .request { h.len = 0 }
        enqueue(h, [])
    }

    /// Freed buffer space the guest should hear of (5.10.6.3) is noted here and told once per poller pass
    /// (`sendCreditUpdates`), so a burst of packets costs one CREDIT_UPDATE, not one each.
    func maybeCreditUpdate(_ c: VsockConnection) {
        guard !c.creditDue, c.fwdCnt != c.advertisedFwdCnt else { return }
        c.creditDue = true
        creditDue.append(c)
    }

    /// Told in steps of a quarter of buf_alloc while the guest has plenty of credit, and whatever there is
    /// once it has less than that left: a guest blocked on credit (Linux waits for credit > 0) always hears
    /// of space we have (issue 8). A queued update carries the counters current when it reaches the guest.
    @discardableResult
    func sendCreditUpdates() -> Bool {
        guard !creditDue.isEmpty else { return false }
        let due = creditDue
        creditDue.removeAll(keepingCapacity: true)
        for c in due {
            c.creditDue = false
            guard connections[c.key] === c, !c.creditUpdateQueued else { continue }
            let untold = c.fwdCnt &- c.advertisedFwdCnt
            let step = max(1, c.bufAlloc / 4)
            guard untold > 0, untold >= step || c.guestCredit < step else { continue }
            c.creditUpdateQueued = true
            queueControl(c, .creditUpdate)
        }
        return true
    }

    /// Paused for credit: ask the guest for its counters (5.10.6.3, CREDIT_REQUEST). Linux reports what its
    /// reader consumed only once less than 64 KiB of its buffer is unreported, so a reader that stopped
    /// (blocked writing to us, say) may hold credit we would never hear of (issue 8). A guest that reads
    /// resumes us on its own well before: the first request goes 200 ms into the pause (the connection
    /// timer's ticks), the next ones 400 ms, 800 ms, ... up to 3.2 s apart while the pause lasts.
    func askForCredit(_ c: VsockConnection, now: UInt64 = monotonicMicros()) {
        guard c.creditRequestedAt != 0 else {
            // The pause begins: the clock starts, nothing is sent yet.
            c.creditRequestedAt = now
            c.creditRequestBackoff = VsockOptions.creditRequestIntervalMicros
            return
        }
        guard now &- c.creditRequestedAt >= c.creditRequestBackoff else { return }
        c.creditRequestBackoff = min(c.creditRequestBackoff * 2, 16 * VsockOptions.creditRequestIntervalMicros)
        c.creditRequestedAt = now
        queueControl(c, .creditRequest)
    }
}
