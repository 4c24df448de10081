#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Virtio

/// Guest data to the host socket: written straight from guest memory, the rest held up to our buf_alloc.
extension VsockEngine {
    /// RW from the guest: written straight from guest memory to the host socket; what the socket will not
    /// take now is kept (never more than our buf_alloc, which the guest's credit already respects).
    func guestData(_ c: VsockConnection, _ h: VsockHeader) {
        let len = Int(h.len)
        tx!.stats.add(.writtenBytes, UInt64(len))
        c.rxCnt &+= UInt32(truncatingIfNeeded: len)
        if c.type == .seqpacket { return seqpacketFromGuest(c, h) }
        guard len > 0 else { return }
        guard c.unsentBytes + len <= Int(c.bufAlloc) else { return violation(c, "guest sent past its credit") }
        var written = 0
        if c.unsentBytes == 0, let n = txSegs.slice(writable: false, offset: VsockLayout.headerSize, length: len, into: iov, outCapacity: 64) {
            let r = Glibc.writev(c.fd, iov, Int32(n))
            if r > 0 { written = r }
            else if r < 0 && errno != EAGAIN && errno != EWOULDBLOCK { return hostGone(c) }
        }
        c.fwdCnt &+= UInt32(written)
        if written < len {
            if c.outStart > 0 && c.outStart * 2 > c.outBuf.count {
                c.outBuf.removeFirst(c.outStart)
                c.outStart = 0
            }
            let old = c.outBuf.count
            c.outBuf.append(contentsOf: repeatElement(0, count: len - written))
            c.outBuf.withUnsafeMutableBytes {
                _ = txSegs.copyReadable(offset: VsockLayout.headerSize + written, into: $0.baseAddress! + old, length: len - written)
            }
            updateWatch(c)
        }
        maybeCreditUpdate(c)
    }

    func appendPayload(_ buf: inout [UInt8], _ len: Int) {
        let old = buf.count
        buf.append(contentsOf: repeatElement(0, count: len))
        buf.withUnsafeMutableBytes {
            _ = txSegs.copyReadable(offset: VsockLayout.headerSize, into: $0.baseAddress! + old, length: len)
        }
    }

    /// Writes kept guest data to the host socket; true once nothing is left.
    @discardableResult
    func flushHost(_ c: VsockConnection) -> Bool {
        while c.outStart < c.outBuf.count {
            let r = c.outBuf.withUnsafeBytes { Glibc.write(c.fd, $0.baseAddress! + c.outStart, $0.count - c.outStart) }
            if r < 0 {
                if errno == EAGAIN || errno == EWOULDBLOCK { break }
                hostGone(c)
                return false
            }
            c.outStart += r
            c.fwdCnt &+= UInt32(r)
        }
        if c.outStart == c.outBuf.count {
            c.outBuf.removeAll(keepingCapacity: false)
            c.outStart = 0
        }
        while let m = c.seqOut.first {
            let r = m.withUnsafeBytes { Glibc.send(c.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if r < 0 {
                if errno == EAGAIN || errno == EWOULDBLOCK { break }
                hostGone(c)
                return false
            }
            c.fwdCnt &+= UInt32(m.count)
            c.seqOut.removeFirst()
        }
        updateWatch(c)
        maybeCreditUpdate(c)
        let empty = c.unsentBytes == 0
        if empty { finishShutdowns(c) }
        return empty
    }
}
