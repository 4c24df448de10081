#if canImport(Glibc)
import Glibc
#endif
import CVdevd

/// The shared memory where a backend records which requests are in flight (vhost-user.rst, "Inflight I/O
/// tracking", split layout), so that a backend started after a crash resubmits exactly those. The frontend keeps
/// the fd across backend restarts (VHOST_USER_GET_INFLIGHT_FD / SET_INFLIGHT_FD); one region per queue.
public final class InflightMemory {
    public let numQueues: Int
    public let queueSize: Int
    public let mmapSize: UInt64
    let base: UnsafeMutableRawPointer
    private let mapping: GuestMapping

    /// Header (features u64, version u16, desc_num u16, last_batch_head u16, used_idx u16), then one 16-byte
    /// DescStateSplit per descriptor; queue regions 64-byte aligned.
    public static func regionSize(queueSize: Int) -> Int { (16 + 16 * queueSize + 63) / 64 * 64 }

    /// A fresh region for the frontend to keep (GET_INFLIGHT_FD): a memfd, every queue's region initialised.
    /// Returns the mapping and the fd to send (the caller closes it once sent).
    public static func create(numQueues: Int, queueSize: Int) throws -> (InflightMemory, Int32) {
        guard (1...1024).contains(numQueues), queueSize > 0, queueSize <= Int(SplitVirtqueue.maxSize),
              queueSize & (queueSize - 1) == 0 else {
            throw SystemError("inflight region of \(numQueues) queues of \(queueSize)", errno: EINVAL)
        }
        let size = UInt64(numQueues * regionSize(queueSize: queueSize))
        let fd = vdv_memfd_create("vdevd-inflight")
        guard fd >= 0 else { throw SystemError("memfd_create", errno: -fd) }
        guard ftruncate(fd, off_t(size)) == 0 else {
            let e = errno
            closeFD(fd)
            throw SystemError("ftruncate(inflight)", errno: e)
        }
        do {
            // Left zeroed (version 0): each queue's region is initialised when its ring first starts, from the
            // ring's own used index, and a fresh region never moves the ring's base.
            return (try InflightMemory(fd: fd, mmapSize: size, offset: 0, numQueues: numQueues, queueSize: queueSize), fd)
        } catch {
            closeFD(fd)
            throw error
        }
    }

    /// Maps a region the frontend passed (SET_INFLIGHT_FD). The fd must really hold it (mapping past its end
    /// would fault the daemon on first touch) and must not be able to vanish. `ownFile`: a file vdevd made and
    /// keeps itself (VDUSE's in-flight record), admitted as it is.
    public init(fd: Int32, mmapSize: UInt64, offset: UInt64, numQueues: Int, queueSize: Int, ownFile: Bool = false) throws {
        guard (1...1024).contains(numQueues), queueSize > 0, queueSize <= Int(SplitVirtqueue.maxSize),
              queueSize & (queueSize - 1) == 0,
              mmapSize >= UInt64(numQueues * InflightMemory.regionSize(queueSize: queueSize)) else {
            throw SystemError("inflight region (\(numQueues) queues of \(queueSize), \(mmapSize) bytes)", errno: EINVAL)
        }
        if ownFile {
            guard mmapSize <= 1 << 30, offset % UInt64(getpagesize()) == 0 else {
                throw SystemError("inflight record of \(mmapSize) bytes at \(offset)", errno: EINVAL)
            }
            mapping = try GuestMapping(trustedFD: fd, offset: offset, length: Int(mmapSize), writable: true, what: "inflight record")
            base = mapping.base
        } else {
            (mapping, base) = try mapFrontendFile(fd: fd, length: mmapSize, offset: offset, what: "inflight region")
        }
        self.mmapSize = mmapSize
        self.numQueues = numQueues
        self.queueSize = queueSize
    }

    /// Forgets every queue's record (a device reset: the next driver starts from scratch). No ring may use it.
    public func clear() { memset(base, 0, Int(mmapSize)) }

    /// Queue `index`'s region, if the region has one for it and its ring has the size the region was made for.
    public func queue(_ index: Int, size: Int) -> SplitInflight? {
        guard index < numQueues, size == queueSize else { return nil }
        return SplitInflight(memory: self, at: base + index * InflightMemory.regionSize(queueSize: queueSize), size: size)
    }
}

/// One queue's in-flight record, split-ring layout. Used by its ring's poller only.
public struct SplitInflight {
    let memory: InflightMemory  // keeps the mapping alive
    let p: UnsafeMutableRawPointer
    let size: Int
    /// Order in which heads were taken off the avail ring (DescStateSplit.counter).
    private var counter: UInt64 = 1

    init(memory: InflightMemory, at p: UnsafeMutableRawPointer, size: Int) {
        self.memory = memory
        self.p = p
        self.size = size
    }

    private var version: UInt16 {
        get { p.load(fromByteOffset: 8, as: UInt16.self) }
        nonmutating set { p.storeBytes(of: newValue, toByteOffset: 8, as: UInt16.self) }
    }
    private var descNum: UInt16 {
        get { p.load(fromByteOffset: 10, as: UInt16.self) }
        nonmutating set { p.storeBytes(of: newValue, toByteOffset: 10, as: UInt16.self) }
    }
    private var lastBatchHead: UInt16 {
        get { p.load(fromByteOffset: 12, as: UInt16.self) }
        nonmutating set { p.storeBytes(of: newValue, toByteOffset: 12, as: UInt16.self) }
    }
    private var usedIdx: UInt16 {
        get { p.load(fromByteOffset: 14, as: UInt16.self) }
        nonmutating set { p.storeBytes(of: newValue, toByteOffset: 14, as: UInt16.self) }
    }
    @inline(__always) private func desc(_ i: Int) -> UnsafeMutableRawPointer { p + 16 + 16 * i }

    func initialise(usedIdx: UInt16) {
        memset(p, 0, 16 + 16 * size)
        version = 1
        descNum = UInt16(truncatingIfNeeded: size)
        self.usedIdx = usedIdx
    }

    /// After a restart: finishes the last batch a crash may have interrupted, and returns the heads that were in
    /// flight in the order they were taken; nil for a region no backend has used yet (it is initialised now).
    /// Every value read here is the frontend's to forge: indexes are checked, walks are bounded.
    mutating func recover(ringUsedIdx: UInt16) -> [UInt16]? {
        guard version == 1, Int(descNum) == size else {
            initialise(usedIdx: ringUsedIdx)
            return nil
        }
        // used->idx moved past used_idx: that batch reached the driver, but its inflight flags may not be cleared.
        var batch = Int(ringUsedIdx &- usedIdx)
        var head = Int(lastBatchHead)
        while batch > 0 && batch <= size && head < size {
            desc(head).storeBytes(of: 0, as: UInt8.self)
            head = Int(desc(head).load(fromByteOffset: 6, as: UInt16.self))
            batch -= 1
        }
        usedIdx = ringUsedIdx
        var inflight: [(UInt64, UInt16)] = []
        var highest: UInt64 = 0
        for i in 0..<size where desc(i).load(as: UInt8.self) == 1 {
            let c = desc(i).load(fromByteOffset: 8, as: UInt64.self)
            inflight.append((c, UInt16(i)))
            highest = max(highest, c)
        }
        counter = highest &+ 1
        return inflight.sorted { $0.0 < $1.0 }.map { $0.1 }
    }

    /// A head taken off the avail ring, before its request starts.
    @inline(__always)
    mutating func started(_ head: UInt16) {
        let d = desc(Int(head))
        d.storeBytes(of: counter, toByteOffset: 8, as: UInt64.self)
        counter &+= 1
        d.storeBytes(of: 1, as: UInt8.self)
    }

    /// A head put back on the avail ring before it started.
    @inline(__always)
    func unstarted(_ head: UInt16) { desc(Int(head)).storeBytes(of: 0, as: UInt8.self) }

    /// A head written to the used ring (not yet published): it joins the batch list.
    @inline(__always)
    func used(_ head: UInt16) {
        desc(Int(head)).storeBytes(of: lastBatchHead, toByteOffset: 6, as: UInt16.self)
        lastBatchHead = head
    }

    /// The batch of `count` heads was published with used->idx = `ringUsedIdx`: none of them is in flight now.
    @inline(__always)
    func published(count: Int, ringUsedIdx: UInt16) {
        var head = Int(lastBatchHead)
        var n = count
        while n > 0 && head < size {
            desc(head).storeBytes(of: 0, as: UInt8.self)
            head = Int(desc(head).load(fromByteOffset: 6, as: UInt16.self))
            n -= 1
        }
        usedIdx = ringUsedIdx
    }
}
