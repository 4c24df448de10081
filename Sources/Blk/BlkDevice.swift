#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Virtio

public struct BlkError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// A virtio-blk device backed by a file or block device (virtio 1.3, 5.2).
public final class BlkDevice: VirtioDevice {
    public let options: BlkOptions
    public let fd: Int32
    public let sizeBytes: UInt64
    public let isBlockDevice: Bool
    /// Capacity in 512-byte sectors (config `capacity`).
    public let capacitySectors: UInt64
    /// `writeback` config byte: 1 write back (flush needed), 0 write through (writes use RWF_DSYNC).
    let writeback = UnsafeMutablePointer<UInt8>.allocate(capacity: 1)
    public let idBytes: [UInt8]
    /// The image lives in memory (tmpfs): requests are served inline on the poller, because io_uring would
    /// hand every one to a worker thread (tmpfs reads cannot be issued non-blocking) and AIO copies inline anyway.
    public let servesInline: Bool
    public let zeroRangeSupported: Bool
    /// The guest's logical block size: the option, raised to what O_DIRECT on the backing needs.
    public let logicalBlockSize: UInt32
    /// O_DIRECT rules of the backing (STATX_DIOALIGN, or the logical block size): buffer address, offset/length.
    public let dioMemoryAlignment: UInt32
    public let dioOffsetAlignment: UInt32
    /// DISCARD on a block device goes through io_uring (BLOCK_URING_CMD_DISCARD, Linux 6.12); on older kernels
    /// it is a BLKDISCARD ioctl on the poller.
    public let asyncBlockDiscard: Bool
    #if DEBUG
    /// Tests only: reads and writes report at most this many bytes done (0: off), as a disk's short transfer would.
    public var shortTransferLimitForTests: Int32 = 0
    #endif
    /// Things the operator should know about how this export is served (logged once at start).
    public private(set) var notes: [String] = []
    /// Where zeros are written by hand on the poller (tmpfs), one request may not hold it for long: 1 MiB per
    /// range, 16 MiB per request (was 8 MiB a range: 16 x 8 MiB held other exports for seconds, issue 14).
    public var maxWriteZeroesSectors: UInt32 { zeroRangeSupported ? BlkOptions.maxDiscardSectors : 2048 }
    /// Zeros for WRITE_ZEROES where the file system cannot zero a range itself.
    static let zeros = UnsafeMutableRawPointer.allocate(byteCount: 1 << 16, alignment: 4096).initializeMemory(as: UInt8.self, repeating: 0, count: 1 << 16)

    /// Writes zeros over [offset, offset+length) with plain writes; 0 or -errno.
    func writeZeros(offset: UInt64, length: UInt64) -> Int32 {
        var done: UInt64 = 0
        while done < length {
            let n = Int(min(length - done, 1 << 16))
            let r = pwrite(fd, BlkDevice.zeros, n, off_t(offset + done))
            if r < 0 { if errno == EINTR { continue }; return -errno }
            done += UInt64(r)
        }
        return 0
    }

    public var deviceID: VirtioDeviceID { .block }
    public var maxQueues: Int { options.numQueues }
    public var maxQueueSize: UInt32 { options.queueSize }

    /// The feature bits this device offers; one constant, asserted by tests.
    public static let features: UInt64 =
        VirtioFeature.version1 | VirtioFeature.ringIndirectDesc | VirtioFeature.ringEventIdx
        | BlkFeature.sizeMax | BlkFeature.segMax | BlkFeature.blkSize | BlkFeature.flush | BlkFeature.topology
        | BlkFeature.configWCE | BlkFeature.mq | BlkFeature.discard | BlkFeature.writeZeroes
    /// A read-only export offers RO and nothing that writes.
    public static let readonlyFeatures: UInt64 =
        (features & ~(BlkFeature.discard | BlkFeature.writeZeroes | BlkFeature.configWCE)) | BlkFeature.ro

    public var offeredFeatures: UInt64 { options.readonly ? BlkDevice.readonlyFeatures : BlkDevice.features }

    public init(options: BlkOptions) throws {
        guard options.logicalBlockSize == 512 || options.logicalBlockSize == 4096 else {
            throw BlkError("logical-block-size must be 512 or 4096")
        }
        self.options = options
        let flags = vdv_open_flags(options.readonly ? 1 : 0, options.direct ? 1 : 0)
        var fd = open(options.path, flags)
        // O_NOATIME is only allowed to the file's owner; anyone else opens without it.
        if fd < 0 && errno == EPERM { fd = open(options.path, flags & ~VDV_O_NOATIME) }
        guard fd >= 0 else {
            throw BlkError("cannot open \(options.path): \(String(cString: strerror(errno)))")
        }
        var notes: [String] = []
        var info = vdv_backing_info()
        let rc = vdv_backing_probe(fd, &info)
        guard rc == 0 else {
            closeFD(fd)
            throw BlkError("\(options.path) is not a regular file or block device (\(String(cString: strerror(-rc))))")
        }
        self.fd = fd
        self.sizeBytes = UInt64(info.size)
        self.isBlockDevice = info.is_block_device != 0
        asyncBlockDiscard = isBlockDevice && options.engine == .ioUring && vdv_kernel_at_least(6, 12) != 0
        dioMemoryAlignment = max(1, info.dio_mem_align)
        dioOffsetAlignment = max(1, info.dio_offset_align)
        // With O_DIRECT every offset must be aligned as the backing says: the guest's block must be at least that.
        var lbs = options.logicalBlockSize
        if options.direct && dioOffsetAlignment > lbs {
            guard dioOffsetAlignment <= 4096 else {
                closeFD(fd)
                throw BlkError("\(options.path) needs O_DIRECT I/O aligned to \(dioOffsetAlignment) bytes; the largest logical-block-size is 4096")
            }
            notes.append("logical-block-size raised from \(lbs) to \(dioOffsetAlignment): \(options.path) takes O_DIRECT I/O in \(dioOffsetAlignment)-byte blocks")
            lbs = dioOffsetAlignment
        }
        logicalBlockSize = lbs
        // Whole logical blocks only: a tail shorter than a block is not addressable.
        capacitySectors = (UInt64(info.size) / UInt64(lbs) * UInt64(lbs)) / BlkLayout.sectorSize
        writeback.pointee = options.writeCache ? 1 : 0
        idBytes = Array(options.id.utf8.prefix(BlkLayout.idBytes))
        // Inline only where nothing can wait for a device: a regular file on tmpfs, ramfs or hugetlbfs.
        let onMemoryFS = info.on_memory_fs != 0
        servesInline = options.inlineIO && onMemoryFS
        if servesInline { notes.append("\(options.path) is on a memory file system: requests are served inline on the poller") }
        // tmpfs has no FALLOC_FL_ZERO_RANGE: WRITE_ZEROES without unmap writes zeros there instead.
        zeroRangeSupported = !onMemoryFS
        self.notes = notes
    }

    deinit {
        closeFD(fd)
        writeback.deallocate()
    }

    public var writebackEnabled: Bool { vdv_load_relaxed_u8(writeback) != 0 }

    /// struct virtio_blk_config (virtio 1.3, 5.2.4), little-endian.
    public func configBytes() -> [UInt8] {
        var c = [UInt8](repeating: 0, count: BlkLayout.configSize)
        func put<T: FixedWidthInteger>(_ v: T, _ off: Int) {
            withUnsafeBytes(of: v.littleEndian) { for (i, b) in $0.enumerated() { c[off + i] = b } }
        }
        let lbsSectors = logicalBlockSize / 512
        put(capacitySectors, 0)
        put(BlkOptions.sizeMax, 8)
        put(BlkOptions.segMax, 12)
        // geometry (16..19) left zero
        put(logicalBlockSize, 20)
        put(UInt8(0), 24)                   // physical_block_exp
        put(UInt8(0), 25)                   // alignment_offset
        put(UInt16(1), 26)                  // min_io_size, in logical blocks
        put(UInt32(0), 28)                  // opt_io_size
        c[32] = vdv_load_relaxed_u8(writeback)
        put(UInt16(options.numQueues), 34)
        put(BlkOptions.maxDiscardSectors, 36)
        put(BlkOptions.maxDiscardSegments, 40)
        put(lbsSectors, 44)                 // discard_sector_alignment
        put(maxWriteZeroesSectors, 48)
        put(BlkOptions.maxDiscardSegments, 52)
        c[56] = 1                           // write_zeroes_may_unmap
        return c
    }

    public func readConfig(offset: Int, count: Int) -> [UInt8] {
        let c = configBytes()
        return (0..<count).map { i in offset + i < c.count ? c[offset + i] : 0 }
    }

    /// Only `writeback` is writable, and only when VIRTIO_BLK_F_CONFIG_WCE is offered (5.2.5).
    public func writeConfig(offset: Int, bytes: [UInt8]) -> Bool {
        guard !options.readonly, offset == BlkLayout.writebackOffset, bytes.count == 1, bytes[0] <= 1 else {
            return false
        }
        vdv_store_relaxed_u8(writeback, bytes[0])
        return true
    }

    public func featuresAcked(_ features: UInt64) {}

    /// Reads, writes, flushes, discards: each may run twice, so one in flight at a crash is started again.
    public var resubmitsInflight: Bool { true }
    /// Every write to guest memory (read data, GET_ID, status) is in a writable buffer of a returned request,
    /// and those are logged as they are returned.
    public var logsDirtyPages: Bool { true }

    /// O_DIRECT through io_uring pins the guest's pages for every request unless they are registered once.
    public var usesFixedBuffers: Bool {
        options.fixedBuffers && options.direct && options.engine == .ioUring && !servesInline
    }

    public func makeQueueHandler(context: QueueContext) throws -> QueueHandler {
        switch options.engine {
        case .ioUring: return BlkQueue(device: self, context: context, io: .uring(context.ioRing))
        case .aio: return BlkQueue(device: self, context: context, io: .aio(try context.aio()))
        }
    }

    public func reset() {
        vdv_store_relaxed_u8(writeback, options.writeCache ? 1 : 0)
    }
}
