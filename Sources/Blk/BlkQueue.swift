#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Virtio

/// One validated DISCARD or WRITE_ZEROES range, in bytes.
struct BlkRange {
    var offset: UInt64
    var length: UInt64
    var unmap: Bool
}

/// One request in flight; slots are preallocated per queue so the data path allocates nothing.
struct BlkRequestSlot {
    var head: UInt16 = 0
    var segments: ChainSegments
    var iov: UnsafeMutablePointer<iovec>
    var status: UnsafeMutablePointer<UInt8>? = nil
    var pending: Int = 0
    var failed = false
    var expected: Int32 = 0
    var usedLength: UInt32 = 0
    var isWrite = false
    var bytes: UInt64 = 0
    /// Where the rest of a read or write goes in the file, and how many of `iov`'s entries are left.
    var offset: UInt64 = 0
    var iovCount = 0
    /// Chunks of the queue's bounce buffer this request's data goes through (O_DIRECT, misaligned guest buffers).
    var bounce: BounceBuffer.Run? = nil
    /// Failed to the driver at a stop while still at the device: the slot waits for the device's answer.
    var abandoned = false
}

/// Serves one virtio-blk queue on its poller (virtio 1.3, 5.2.6): parses requests and submits them to the
/// poller's io_uring, reading and writing guest memory in place.
final class BlkQueue: QueueHandler {
    let device: BlkDevice
    let binding: QueueBinding
    let vq: SplitVirtqueue
    let ring: BlockIO
    let slotID: UInt16
    let fd: Int32
    let capacityBytes: UInt64
    let inline: Bool
    let stats: QueueStats
    private var slots: UnsafeMutablePointer<BlkRequestSlot>
    private let slotCount: Int
    private var freeList: [UInt32]
    private(set) var inflight = 0
    private(set) var abandonedInFlight = 0
    private var bounce = BounceBuffer()
    /// io_uring only: the image's slot in the ring's file table (-1: none), and where guest memory lies in the
    /// ring's registered buffers.
    private let uring: IORing?
    private let fileIndex: Int32
    private var fixed: FixedBufferMap?
    /// A request is back on the avail ring until a bounce buffer frees up (at a completion).
    private var waitingForBounce = false
    /// Fairness between queues on one poller: at most this many new requests per pass,
    static let batch = 64
    /// and at most about this many bytes (at least one request a pass): a queue of 256 MiB reads no longer holds
    /// the other queues of its poller for seconds (issue 14, finding 2).
    static let passBytes = 2 << 20
    /// Reads and writes done inline on the poller (memory file systems) go this many bytes a pass; the rest of a
    /// larger one waits in `continuing` for the next pass, after the other queues had theirs.
    static let inlineChunk = 1 << 20
    /// Inline transfers started and not finished (tags, oldest first).
    private var continuing: [UInt32] = []
    /// Bytes this pass has cost the poller so far (transfers started or continued, zeros written inline).
    private var passCost = 0
    static let segmentCapacity = Int(BlkOptions.segMax) + 2 + 8
    private let header = UnsafeMutableRawPointer.allocate(byteCount: BlkLayout.headerSize, alignment: 8)
    /// DISCARD / WRITE_ZEROES ranges of the request being started, copied out of guest memory once.
    private let ranges = UnsafeMutablePointer<BlkRange>.allocate(capacity: Int(BlkOptions.maxDiscardSegments))

    init(device: BlkDevice, context: QueueContext, io: BlockIO) {
        self.device = device
        binding = context.binding
        vq = context.binding.vq
        ring = io
        slotID = context.slot
        fd = device.fd
        inline = device.servesInline
        capacityBytes = device.capacitySectors * BlkLayout.sectorSize
        stats = context.binding.stats
        slotCount = Int(vq.size)
        slots = .allocate(capacity: slotCount)
        for i in 0..<slotCount {
            // One iovec more than the segments: the bounce buffer's.
            (slots + i).initialize(to: BlkRequestSlot(
                segments: ChainSegments(capacity: BlkQueue.segmentCapacity),
                iov: .allocate(capacity: BlkQueue.segmentCapacity + 1)))
        }
        freeList = (0..<UInt32(slotCount)).reversed().map { $0 }
        freeList.reserveCapacity(slotCount)
        continuing.reserveCapacity(slotCount + 1)
        if case .uring(let r) = io, !device.servesInline {
            uring = r
            fileIndex = r.registerFile(device.fd)
        } else {
            uring = nil
            fileIndex = -1
        }
        fixed = context.fixedBuffers
    }

    func detached() {
        if fileIndex >= 0 { uring?.unregisterFile(fd) }
    }

    func fixedBuffersChanged(_ map: FixedBufferMap?) { fixed = map }

    deinit {
        for i in 0..<slotCount {
            slots[i].segments.deallocate()
            slots[i].iov.deallocate()
        }
        slots.deinitialize(count: slotCount)
        slots.deallocate()
        header.deallocate()
        ranges.deallocate()
        bounce.release()
    }

    func process() throws -> Bool {
        let continued = continueStarted()
        var n = 0
        while n < BlkQueue.batch, passCost < BlkQueue.passBytes, !waitingForBounce, !freeList.isEmpty,
              ring.hasRoom(Int(BlkOptions.maxDiscardSegments)) {
            guard let head = try vq.popHead() else { break }
            let tag = freeList.removeLast()
            guard try start(tag: tag, head: head) else {
                // Back on the ring until a bounce buffer is free.
                vq.unpop()
                freeList.append(tag)
                waitingForBounce = true
                break
            }
            n += 1
        }
        return n > 0 || continued
    }

    /// Starts a pass: moves each unfinished inline transfer on by one chunk, oldest first, within the pass's
    /// bytes. Also called by the poller for a queue that is stopping (it drains what it started). True if any moved.
    func continueStarted() -> Bool {
        passCost = 0
        guard !continuing.isEmpty else { return false }
        // Those put back go to the end; those not reached keep their turn at the front. No allocation: the array
        // keeps its capacity (one entry per slot at most).
        let waiting = continuing.count
        var i = 0
        while i < waiting && passCost < BlkQueue.passBytes {
            submitTransfer(tag: continuing[i])
            i += 1
        }
        continuing.removeFirst(i)
        return i > 0
    }

    /// Parses one chain and submits its I/O, or finishes it at once (GET_ID, errors). False: the request needs
    /// a bounce buffer and none is free; nothing was started or counted.
    private func start(tag: UInt32, head: UInt16) throws -> Bool {
        let s = slots + Int(tag)
        s.pointee.head = head
        s.pointee.pending = 0
        s.pointee.failed = false
        s.pointee.bytes = 0
        s.pointee.isWrite = false
        s.pointee.bounce = nil
        do {
            try vq.readChain(head: head, into: &s.pointee.segments)
        } catch {
            freeList.append(tag)
            throw error
        }
        inflight += 1
        stats.add(.requests)
        let segs = s.pointee.segments
        // 5.2.6: a status byte at the end of the device-writable part.
        guard let status = segs.lastWritableByte else {
            finishMalformed(tag: tag)
            return true
        }
        s.pointee.status = status
        s.pointee.usedLength = 1
        guard segs.readableBytes >= UInt64(BlkLayout.headerSize),
              segs.copyReadable(offset: 0, into: header, length: BlkLayout.headerSize) else {
            finish(tag: tag, .ioerr); return true
        }
        let type = BlkRequestType(rawValue: UInt32(littleEndian: header.loadUnaligned(as: UInt32.self)))
        let sector = UInt64(littleEndian: header.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        let ud = IORing.userData(slot: slotID, tag: tag)

        switch type {
        case .in, .out:
            let isWrite = type == .out
            if isWrite && device.options.readonly { finish(tag: tag, .ioerr); return true }
            let length = isWrite ? segs.readableBytes - UInt64(BlkLayout.headerSize) : segs.writableBytes - 1
            guard length % BlkLayout.sectorSize == 0, length <= UInt64(Int32.max), inRange(sector, length) else {
                finish(tag: tag, .ioerr); return true
            }
            guard length > 0 else { finish(tag: tag, .ok); return true }
            guard let n = segs.slice(writable: !isWrite, offset: isWrite ? BlkLayout.headerSize : 0,
                                     length: Int(length), into: s.pointee.iov, outCapacity: BlkQueue.segmentCapacity)
            else { finish(tag: tag, .ioerr); return true }
            s.pointee.iovCount = n
            if device.options.direct && !dioAligned(s.pointee.iov, n) {
                guard Int(length) <= BounceBuffer.capacity, bounce.reserve() else { finish(tag: tag, .ioerr); return true }
                guard let (run, buffer) = bounce.take(Int(length)) else {
                    inflight -= 1
                    stats.remove(.requests)
                    return false
                }
                stats.add(.bounced)
                s.pointee.bounce = run
                s.pointee.iov[BlkQueue.segmentCapacity] = iovec(iov_base: buffer, iov_len: Int(length))
                if isWrite { copyGuest(s, toBounce: true) }
            }
            s.pointee.expected = Int32(length)
            s.pointee.bytes = length
            s.pointee.isWrite = isWrite
            s.pointee.usedLength = isWrite ? 1 : UInt32(length) + 1
            s.pointee.pending = 1
            s.pointee.offset = sector * BlkLayout.sectorSize
            submitTransfer(tag: tag)
        case .flush:
            stats.add(.flushes)
            s.pointee.expected = 0
            s.pointee.pending = 1
            if inline { complete(tag: tag, result: vdv_fdatasync(fd)) } else {
                _ = ring.fsync(fd: fd, dataOnly: !device.isBlockDevice, userData: ud)
            }
        case .getID:
            // 5.2.6.1: the id fills up to 20 bytes, NUL-padded when shorter.
            let room = Int(segs.writableBytes) - 1
            guard room >= 0 else { finish(tag: tag, .ioerr); return true }
            var id = device.idBytes
            if id.count < BlkLayout.idBytes { id.append(contentsOf: [UInt8](repeating: 0, count: BlkLayout.idBytes - id.count)) }
            let written = id.withUnsafeBytes { segs.copyToWritable(offset: 0, from: $0.baseAddress!, length: min(room, id.count)) }
            s.pointee.usedLength = UInt32(written) + 1
            finish(tag: tag, .ok); return true
        case .discard, .writeZeroes:
            if device.options.readonly { finish(tag: tag, .ioerr); return true }
            stats.add(.discards)
            try startRanges(tag: tag, type: type, segs: segs, ud: ud)
        default:
            stats.add(.unsupported)
            finish(tag: tag, .unsupp); return true
        }
        return true
    }

    /// O_DIRECT takes the guest's buffers only where each starts on the backing's memory alignment and
    /// holds whole blocks (the kernel checks every segment, not just the total).
    @inline(__always)
    private func dioAligned(_ iov: UnsafeMutablePointer<iovec>, _ n: Int) -> Bool {
        let memMask = UInt(device.dioMemoryAlignment) - 1
        let lenMask = Int(device.dioOffsetAlignment) - 1
        for i in 0..<n where UInt(bitPattern: iov[i].iov_base) & memMask != 0 || iov[i].iov_len & lenMask != 0 {
            return false
        }
        return true
    }

    /// Copies between the guest's buffers and the request's bounce buffer (before a write, after a read).
    private func copyGuest(_ s: UnsafeMutablePointer<BlkRequestSlot>, toBounce: Bool) {
        let buffer = s.pointee.iov[BlkQueue.segmentCapacity].iov_base!
        var at = 0
        for i in 0..<s.pointee.iovCount {
            let v = s.pointee.iov[i]
            if toBounce { memcpy(buffer + at, v.iov_base, v.iov_len) } else { memcpy(v.iov_base, buffer + at, v.iov_len) }
            at += v.iov_len
        }
    }

    /// Starts (or continues, after a short transfer) a read or write: inline, or at the engine.
    /// False if the engine had no room for it.
    @discardableResult
    private func submitTransfer(tag: UInt32) -> Bool {
        let s = slots + Int(tag)
        let bounced = s.pointee.bounce != nil
        let iov = bounced ? s.pointee.iov + BlkQueue.segmentCapacity : s.pointee.iov
        let count = bounced ? 1 : s.pointee.iovCount
        let offset = s.pointee.offset
        let flags: UInt32 = s.pointee.isWrite && !device.writebackEnabled ? VDV_RWF_DSYNC : 0
        if inline {
            // One chunk now; a longer transfer goes on at the next pass (the poller serves the others meanwhile).
            let want = Int(s.pointee.expected)
            let chunk = min(want, BlkQueue.inlineChunk)
            passCost += chunk
            let (n, cutLength) = chunkIovecs(iov, count, chunk)
            let saved = iov[n - 1].iov_len
            iov[n - 1].iov_len = cutLength
            let r = s.pointee.isWrite ? vdv_pwritev(fd, iov, UInt32(n), offset, flags)
                                      : vdv_preadv(fd, iov, UInt32(n), offset)
            iov[n - 1].iov_len = saved
            if chunk < want && r == chunk {
                advance(s, by: chunk)
                continuing.append(tag)
                return true
            }
            complete(tag: tag, result: Int32(clamping: r))
            return true
        }
        passCost += Int(s.pointee.expected)
        let ud = IORing.userData(slot: slotID, tag: tag)
        if fileIndex >= 0, let uring {
            var buf: Int32 = -1
            if count == 1, !bounced, let fixed {
                buf = fixed.index(of: iov.pointee.iov_base!, length: iov.pointee.iov_len)
                if buf >= 0 { stats.add(.fixedBuffers) }
            }
            return uring.rwRegistered(write: s.pointee.isWrite, fileIndex: fileIndex, iov: iov, count: count, bufIndex: buf,
                                      offset: offset, flags: flags, userData: ud)
        }
        return s.pointee.isWrite ? ring.writev(fd: fd, iov: iov, count: count, offset: offset, flags: flags, userData: ud)
                                 : ring.readv(fd: fd, iov: iov, count: count, offset: offset, userData: ud)
    }

    /// How many of the iovecs cover the first `bytes` bytes, and the length the last of them keeps.
    @inline(__always)
    private func chunkIovecs(_ iov: UnsafeMutablePointer<iovec>, _ count: Int, _ bytes: Int) -> (Int, Int) {
        var left = bytes
        var i = 0
        while i < count - 1 && iov[i].iov_len < left {
            left -= iov[i].iov_len
            i += 1
        }
        return (i + 1, min(left, iov[i].iov_len))
    }

    /// DISCARD and WRITE_ZEROES: each range becomes one fallocate (punch a hole, or zero the range).
    private func startRanges(tag: UInt32, type: BlkRequestType, segs: ChainSegments, ud: UInt64) throws {
        let s = slots + Int(tag)
        let payload = segs.readableBytes - UInt64(BlkLayout.headerSize)
        let count = payload / UInt64(BlkLayout.discardSegmentSize)
        guard payload % UInt64(BlkLayout.discardSegmentSize) == 0, count >= 1,
              count <= UInt64(BlkOptions.maxDiscardSegments) else { return finish(tag: tag, .ioerr) }
        let lbs = UInt64(device.logicalBlockSize) / BlkLayout.sectorSize
        // Read every range out of guest memory once, validate the copies, and submit only from them:
        // the guest may rewrite its buffers meanwhile. A bad range fails the request before any is submitted.
        for i in 0..<Int(count) {
            guard segs.copyReadable(offset: BlkLayout.headerSize + i * BlkLayout.discardSegmentSize, into: header,
                                    length: BlkLayout.discardSegmentSize) else { return finish(tag: tag, .ioerr) }
            let sector = UInt64(littleEndian: header.loadUnaligned(as: UInt64.self))
            let num = UInt64(UInt32(littleEndian: header.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
            let flags = UInt32(littleEndian: header.loadUnaligned(fromByteOffset: 12, as: UInt32.self))
            // 5.2.6.2: unmap is only meaningful for WRITE_ZEROES; other flag bits are reserved.
            if flags & ~BlkLayout.discardUnmapFlag != 0 || (type == .discard && flags != 0) {
                return finish(tag: tag, .unsupp)
            }
            let limit = type == .discard ? BlkOptions.maxDiscardSectors : device.maxWriteZeroesSectors
            guard num <= UInt64(limit), sector % lbs == 0, num % lbs == 0,
                  inRange(sector, num * BlkLayout.sectorSize) else { return finish(tag: tag, .ioerr) }
            ranges[i] = BlkRange(offset: sector * BlkLayout.sectorSize, length: num * BlkLayout.sectorSize,
                                 unmap: type == .discard || flags & BlkLayout.discardUnmapFlag != 0)
        }
        s.pointee.expected = 0
        for i in 0..<Int(count) {
            let r = ranges[i]
            guard r.length > 0 else { continue }
            s.pointee.pending += 1
            if device.isBlockDevice {
                // A block device's fallocate punch-hole is a zero-out: DISCARD is BLKDISCARD there, and
                // WRITE_ZEROES (with or without unmap) a zero range, which the kernel does the device's best way.
                if type == .discard {
                    if device.asyncBlockDiscard {
                        _ = ring.blockDiscard(fd: fd, offset: r.offset, length: r.length, userData: ud)
                    } else {
                        if vdv_blk_discard(fd, r.offset, r.length) < 0 { s.pointee.failed = true }
                        s.pointee.pending -= 1
                    }
                } else {
                    _ = ring.fallocate(fd: fd, mode: VDV_FALLOC_ZERO_RANGE, offset: r.offset, length: r.length, userData: ud)
                }
                continue
            }
            let mode = r.unmap ? VDV_FALLOC_PUNCH_HOLE : VDV_FALLOC_ZERO_RANGE
            if !r.unmap && !device.zeroRangeSupported {
                // Only memory file systems land here: zeros are written inline, at memory speed.
                passCost += Int(r.length)
                if device.writeZeros(offset: r.offset, length: r.length) < 0 { s.pointee.failed = true }
                s.pointee.pending -= 1
            } else if inline {
                if vdv_fallocate(fd, mode, r.offset, r.length) < 0 { s.pointee.failed = true }
                s.pointee.pending -= 1
            } else {
                _ = ring.fallocate(fd: fd, mode: mode, offset: r.offset, length: r.length, userData: ud)
            }
        }
        if s.pointee.pending == 0 { finish(tag: tag, s.pointee.failed ? .ioerr : .ok) }
    }

    @inline(__always)
    private func inRange(_ sector: UInt64, _ length: UInt64) -> Bool {
        let (start, o1) = sector.multipliedReportingOverflow(by: BlkLayout.sectorSize)
        guard !o1 else { return false }
        let (end, o2) = start.addingReportingOverflow(length)
        return !o2 && end <= capacityBytes
    }

    /// Requests waiting that this queue can start now; with no free slot or no room at the engine they wait for
    /// a completion, which wakes the poller anyway.
    func hasPendingWork() -> Bool {
        !continuing.isEmpty || !waitingForBounce && !freeList.isEmpty && ring.hasRoom(Int(BlkOptions.maxDiscardSegments)) && ((try? vq.pendingCount()) ?? 0) > 0
    }

    func complete(tag: UInt32, result: Int32) {
        guard Int(tag) < slotCount else { return }
        let s = slots + Int(tag)
        guard s.pointee.pending > 0 else { return }
        if s.pointee.abandoned {
            // The driver already has this request back (IOERR); the device is done with its buffers only now.
            s.pointee.pending -= 1
            if s.pointee.pending == 0 { release(tag: tag) }
            return
        }
        if s.pointee.expected > 0 {
            var done = result
            #if DEBUG
            if device.shortTransferLimitForTests > 0 && done > device.shortTransferLimitForTests {
                done = device.shortTransferLimitForTests
            }
            #endif
            if done > 0 && done < s.pointee.expected {
                // A short read or write (a disk or file system may stop early): the rest goes again.
                stats.add(.shortTransfers)
                advance(s, by: Int(done))
                if submitTransfer(tag: tag) { return }
                s.pointee.failed = true
            } else if done != s.pointee.expected {
                s.pointee.failed = true
            }
        } else if result < 0 {
            s.pointee.failed = true
        }
        s.pointee.pending -= 1
        if s.pointee.pending == 0 {
            if s.pointee.bounce != nil && !s.pointee.failed && !s.pointee.isWrite { copyGuest(s, toBounce: false) }
            if !s.pointee.failed && s.pointee.bytes > 0 {
                stats.add(s.pointee.isWrite ? .writtenBytes : .readBytes, s.pointee.bytes)
            }
            finish(tag: tag, s.pointee.failed ? .ioerr : .ok)
        }
    }

    /// Moves a transfer past the `n` bytes already done: the offset, and the iovecs (the bounce buffer's one, or
    /// the guest's, dropping those used up).
    private func advance(_ s: UnsafeMutablePointer<BlkRequestSlot>, by n: Int) {
        s.pointee.offset += UInt64(n)
        s.pointee.expected -= Int32(n)
        if s.pointee.bounce != nil {
            let b = s.pointee.iov + BlkQueue.segmentCapacity
            b.pointee.iov_base = b.pointee.iov_base! + n
            b.pointee.iov_len -= n
            return
        }
        let iov = s.pointee.iov
        var skip = n
        var first = 0
        while skip > 0 && first < s.pointee.iovCount {
            if skip >= iov[first].iov_len {
                skip -= iov[first].iov_len
                first += 1
            } else {
                iov[first].iov_base = iov[first].iov_base! + skip
                iov[first].iov_len -= skip
                skip = 0
            }
        }
        if first > 0 {
            (iov).update(from: iov + first, count: s.pointee.iovCount - first)
            s.pointee.iovCount -= first
        }
    }

    @inline(__always)
    private func finish(tag: UInt32, _ status: BlkStatus) {
        returnToDriver(tag: tag, status)
        release(tag: tag)
    }

    /// Writes the status and puts the chain on the used ring.
    @inline(__always)
    private func returnToDriver(tag: UInt32, _ status: BlkStatus) {
        let s = slots + Int(tag)
        if status != .ok {
            stats.add(.errors)
            s.pointee.usedLength = 1
        }
        s.pointee.status!.pointee = status.rawValue
        if binding.dirtyLog != nil { binding.logWritten(s.pointee.segments, bytes: Int.max) }
        binding.complete(head: s.pointee.head, length: s.pointee.usedLength)
        inflight -= 1
    }

    /// The slot (and its bounce chunks) can carry another request.
    @inline(__always)
    private func release(tag: UInt32) {
        let s = slots + Int(tag)
        if let run = s.pointee.bounce {
            bounce.give(run)
            s.pointee.bounce = nil
            waitingForBounce = false
        }
        if s.pointee.abandoned {
            s.pointee.abandoned = false
            abandonedInFlight -= 1
        }
        freeList.append(tag)
    }

    /// io_uring is asked to cancel each request still at the device (AIO cancels nothing reliably).
    func cancelInFlight() {
        guard case .uring(let r) = ring else { return }
        for tag in 0..<UInt32(slotCount) where slots[Int(tag)].pending > 0 {
            _ = r.cancel(userData: IORing.userData(slot: slotID, tag: tag))
        }
    }

    func abandonInFlight() -> Int {
        var n = 0
        for tag in 0..<UInt32(slotCount) where slots[Int(tag)].pending > 0 && !slots[Int(tag)].abandoned {
            slots[Int(tag)].abandoned = true
            abandonedInFlight += 1
            stats.add(.timedOut)
            returnToDriver(tag: tag, .ioerr)
            n += 1
        }
        return n
    }

    /// A chain with no writable byte cannot carry a status: return it with nothing written.
    private func finishMalformed(tag: UInt32) {
        stats.add(.errors)
        binding.complete(head: slots[Int(tag)].head, length: 0)
        freeList.append(tag)
        inflight -= 1
    }
}
