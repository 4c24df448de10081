#if canImport(Glibc)
import Glibc
#endif
import CVdevd

/// The driver side of a split virtqueue in test RAM (virtio 1.3, 2.7), written independently of the
/// device side so tests check one against the other. Also writes raw, malformed descriptors on request.
public final class DriverVirtqueue {
    public struct Buffer {
        public var gpa: UInt64
        public var length: UInt32
        public var writable: Bool
        public init(gpa: UInt64, length: UInt32, writable: Bool) {
            self.gpa = gpa
            self.length = length
            self.writable = writable
        }
    }

    public let ram: GuestRAM
    public let size: UInt16
    public let descGPA: UInt64
    public let availGPA: UInt64
    public let usedGPA: UInt64
    public var eventIdx = false
    private var freeHead: UInt16 = 0
    private var freeCount: UInt16
    private var nextFree: [UInt16]
    private var chains: [UInt16: [UInt16]] = [:]
    private var availIdx: UInt16 = 0
    private var lastUsed: UInt16 = 0

    public init(ram: GuestRAM, size: UInt16) {
        self.ram = ram
        self.size = size
        descGPA = ram.allocate(UInt64(size) * 16, alignment: 16)
        availGPA = ram.allocate(6 + 2 * UInt64(size), alignment: 2)
        usedGPA = ram.allocate(6 + 8 * UInt64(size), alignment: 4)
        freeCount = size
        nextFree = (0..<size).map { $0 &+ 1 }
        ram.fill(descGPA, Int(size) * 16, byte: 0)
        ram.fill(availGPA, 6 + 2 * Int(size), byte: 0)
        ram.fill(usedGPA, 6 + 8 * Int(size), byte: 0)
    }

    // Frontend virtual addresses of the rings (what SET_VRING_ADDR carries).
    public var descUserAddress: UInt64 { ram.userAddress + (descGPA - ram.guestAddress) }
    public var availUserAddress: UInt64 { ram.userAddress + (availGPA - ram.guestAddress) }
    public var usedUserAddress: UInt64 { ram.userAddress + (usedGPA - ram.guestAddress) }

    public var freeDescriptors: Int { Int(freeCount) }

    /// Writes descriptor `i` as given (no checks: tests use it to build malformed chains).
    public func writeDescriptor(_ i: UInt16, addr: UInt64, len: UInt32, flags: UInt16, next: UInt16) {
        let p = ram.pointer(descGPA + UInt64(i) * 16)
        p.storeBytes(of: addr.littleEndian, toByteOffset: 0, as: UInt64.self)
        p.storeBytes(of: len.littleEndian, toByteOffset: 8, as: UInt32.self)
        p.storeBytes(of: flags.littleEndian, toByteOffset: 12, as: UInt16.self)
        p.storeBytes(of: next.littleEndian, toByteOffset: 14, as: UInt16.self)
    }

    /// Builds a chain from free descriptors and makes it available; returns its head.
    /// With `indirect`, the buffers go into an indirect table in RAM and one ring descriptor points at it.
    @discardableResult
    public func add(_ buffers: [Buffer], indirect: Bool = false) -> UInt16 {
        precondition(!buffers.isEmpty)
        if indirect {
            let table = ram.allocate(UInt64(buffers.count) * 16, alignment: 16)
            for (i, b) in buffers.enumerated() {
                let p = ram.pointer(table + UInt64(i) * 16)
                let last = i == buffers.count - 1
                p.storeBytes(of: b.gpa, toByteOffset: 0, as: UInt64.self)
                p.storeBytes(of: b.length, toByteOffset: 8, as: UInt32.self)
                p.storeBytes(of: UInt16((b.writable ? 2 : 0) | (last ? 0 : 1)), toByteOffset: 12, as: UInt16.self)
                p.storeBytes(of: UInt16(last ? 0 : i + 1), toByteOffset: 14, as: UInt16.self)
            }
            let head = takeFree(1)[0]
            writeDescriptor(head, addr: table, len: UInt32(buffers.count * 16), flags: 4, next: 0)
            chains[head] = [head]
            publish(head)
            return head
        }
        let ids = takeFree(buffers.count)
        for (i, b) in buffers.enumerated() {
            let last = i == buffers.count - 1
            writeDescriptor(ids[i], addr: b.gpa, len: b.length, flags: (b.writable ? 2 : 0) | (last ? 0 : 1),
                            next: last ? 0 : ids[i + 1])
        }
        chains[ids[0]] = ids
        publish(ids[0])
        return ids[0]
    }

    private func takeFree(_ n: Int) -> [UInt16] {
        precondition(n <= Int(freeCount), "out of descriptors")
        var ids: [UInt16] = []
        for _ in 0..<n {
            ids.append(freeHead)
            freeHead = nextFree[Int(freeHead)]
        }
        freeCount -= UInt16(n)
        return ids
    }

    /// Puts a head on the avail ring and bumps avail idx (release, as a driver's write barrier).
    public func publish(_ head: UInt16) {
        let slot = Int(availIdx % size)
        ram.pointer(availGPA + 4 + 2 * UInt64(slot)).storeBytes(of: head, as: UInt16.self)
        availIdx &+= 1
        vdv_store_release_u16(ram.pointer(availGPA + 2), availIdx)
    }

    /// Sets avail idx directly (for the "index ran too far" rule).
    public func setAvailIndex(_ v: UInt16) {
        availIdx = v
        vdv_store_release_u16(ram.pointer(availGPA + 2), v)
    }

    public var usedIndex: UInt16 { vdv_load_acquire_u16(ram.pointer(usedGPA + 2)) }
    /// avail_event as the device last wrote it (used->ring[size]).
    public var availEvent: UInt16 { vdv_load_relaxed_u16(ram.pointer(usedGPA + 4 + 8 * UInt64(size))) }
    public var usedFlags: UInt16 { vdv_load_relaxed_u16(ram.pointer(usedGPA)) }

    /// Sets used_event (avail->ring[size]) for EVENT_IDX interrupt suppression.
    public func setUsedEvent(_ v: UInt16) { vdv_store_release_u16(ram.pointer(availGPA + 4 + 2 * UInt64(size)), v) }
    /// Sets VRING_AVAIL_F_NO_INTERRUPT.
    public func setNoInterrupt(_ on: Bool) { vdv_store_release_u16(ram.pointer(availGPA), on ? 1 : 0) }

    /// Takes the next used element, returning its descriptors to the free list.
    public func popUsed() -> (head: UInt16, length: UInt32)? {
        guard usedIndex != lastUsed else { return nil }
        let slot = Int(lastUsed % size)
        let e = ram.pointer(usedGPA + 4 + 8 * UInt64(slot))
        let id = UInt16(truncatingIfNeeded: e.load(as: UInt32.self))
        let len = e.load(fromByteOffset: 4, as: UInt32.self)
        lastUsed &+= 1
        for d in chains.removeValue(forKey: id) ?? [] {
            nextFree[Int(d)] = freeHead
            freeHead = d
            freeCount += 1
        }
        return (id, len)
    }

    /// Next used element without free-list bookkeeping (benchmarks reuse fixed chains).
    @inline(__always)
    public func popUsedFixed() -> (head: UInt16, length: UInt32)? {
        guard usedIndex != lastUsed else { return nil }
        let e = ram.pointer(usedGPA + 4 + 8 * UInt64(lastUsed % size))
        lastUsed &+= 1
        return (UInt16(truncatingIfNeeded: e.load(as: UInt32.self)), e.load(fromByteOffset: 4, as: UInt32.self))
    }

    /// Current avail index as the driver has published it.
    public var availIndex: UInt16 { availIdx }

    /// Whether the device wants a kick for entries published since `oldAvail` (virtio 1.3, 2.7.10).
    @inline(__always)
    public func needsKick(since oldAvail: UInt16) -> Bool {
        vdv_fence_seq_cst()
        if eventIdx {
            let event = availEvent
            return (availIdx &- event &- 1) < (availIdx &- oldAvail)
        }
        return usedFlags & 1 == 0
    }

    /// Polls for a used element until `timeout` seconds pass (a test's safety net, not a timing assertion).
    public func waitUsed(timeout: Double = 10) -> (head: UInt16, length: UInt32)? {
        let deadline = monotonicSeconds() + timeout
        while monotonicSeconds() < deadline {
            if let u = popUsed() { return u }
            usleep(100)
        }
        return nil
    }
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
