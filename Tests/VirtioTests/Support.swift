import XCTest
import Virtio
import VhostUserTestSupport
import CVdevd
#if canImport(Glibc)
import Glibc
#endif

// Descriptor flags (linux/virtio_ring.h), spelled out here so tests do not lean on the code under test.
let descNext: UInt16 = 1       // VRING_DESC_F_NEXT
let descWrite: UInt16 = 2      // VRING_DESC_F_WRITE
let descIndirect: UInt16 = 4   // VRING_DESC_F_INDIRECT

/// The daemon's own mapping of a test memfd (a second mmap of the same pages, as the backend would make).
func mapRegion(_ ram: GuestRAM, guestAddress: UInt64? = nil) throws -> MemoryRegion {
    try MemoryRegion(fd: ram.fd, guestAddress: guestAddress ?? ram.guestAddress, size: ram.size,
                     userAddress: ram.userAddress, mmapOffset: 0)
}

/// Recognisable bytes: a different sequence per seed.
func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: Int(seed) &* 31 &+ $0 &* 7 &+ 1) }
}

func bytes(_ p: UnsafeRawPointer, _ count: Int) -> [UInt8] {
    Array(UnsafeRawBufferPointer(start: p, count: count))
}

/// One translated segment as the device sees it.
struct Segment: Equatable, CustomStringConvertible {
    var bytes: [UInt8]
    var writable: Bool
    var description: String { "\(writable ? "w" : "r")\(bytes.count)" }
}

extension ChainSegments {
    var segments: [Segment] {
        (0..<count).map { i in
            Segment(bytes: bytes(iov[i].iov_base!, iov[i].iov_len), writable: i >= readableCount)
        }
    }
    var lengths: [Int] { (0..<count).map { iov[$0].iov_len } }
    func base(_ i: Int) -> UnsafeMutableRawPointer? { iov[i].iov_base }
}

/// Guest RAM holding one driver-side ring, the daemon's mapping of it (and of any extra RAM), and a
/// factory for the device-side queue over the same rings.
final class RingFixture {
    let ram: GuestRAM
    let extra: [GuestRAM]
    let regions: [MemoryRegion]
    let memory: GuestMemory
    let driver: DriverVirtqueue

    init(queueSize: UInt16 = 8, ramSize: UInt64 = 1 << 20, guestAddress: UInt64 = 0x4000_0000,
         extra: [GuestRAM] = []) throws {
        ram = try GuestRAM(size: ramSize, guestAddress: guestAddress)
        self.extra = extra
        regions = try ([ram] + extra).map { try mapRegion($0) }
        memory = GuestMemory(regions: regions)
        driver = DriverVirtqueue(ram: ram, size: queueSize)
    }

    var ramEnd: UInt64 { ram.guestAddress + ram.size }

    var gpaAddresses: VringAddresses {
        VringAddresses(descriptorTable: driver.descGPA, availRing: driver.availGPA, usedRing: driver.usedGPA,
                       guestPhysical: true)
    }

    var userAddresses: VringAddresses {
        VringAddresses(descriptorTable: driver.descUserAddress, availRing: driver.availUserAddress,
                       usedRing: driver.usedUserAddress, guestPhysical: false)
    }

    func queue(features: UInt64 = 0, lastAvailIdx: UInt16 = 0, size: UInt32? = nil,
               addresses: VringAddresses? = nil) throws -> SplitVirtqueue {
        try SplitVirtqueue(index: 0, size: size ?? UInt32(driver.size), addresses: addresses ?? gpaAddresses,
                           memory: memory, features: features, lastAvailIdx: lastAvailIdx)
    }

    /// A buffer in guest RAM holding `content`.
    func buffer(_ content: [UInt8]) -> UInt64 {
        let gpa = ram.allocate(UInt64(max(content.count, 1)), alignment: 8)
        ram.write(gpa, content)
        return gpa
    }

    func zeroed(_ count: Int) -> UInt64 {
        let gpa = ram.allocate(UInt64(count), alignment: 8)
        ram.fill(gpa, count, byte: 0)
        return gpa
    }

    /// Host address of a guest address in the daemon's mapping (not the test's own mapping).
    func daemonHost(_ gpa: UInt64) -> UnsafeMutableRawPointer? { memory.lookup(gpa: gpa)?.0 }

    /// Writes one raw descriptor at `gpa` (an indirect table entry).
    func writeTableEntry(_ table: UInt64, _ i: Int, addr: UInt64, len: UInt32, flags: UInt16, next: UInt16) {
        let p = ram.pointer(table + UInt64(i) * 16)
        p.storeBytes(of: addr.littleEndian, toByteOffset: 0, as: UInt64.self)
        p.storeBytes(of: len.littleEndian, toByteOffset: 8, as: UInt32.self)
        p.storeBytes(of: flags.littleEndian, toByteOffset: 12, as: UInt16.self)
        p.storeBytes(of: next.littleEndian, toByteOffset: 14, as: UInt16.self)
    }

    /// Sets used->idx in RAM (before the device-side queue is created, which reads it).
    func setUsedIndexInRing(_ v: UInt16) { vdv_store_release_u16(ram.pointer(driver.usedGPA + 2), v) }

    /// used->ring[slot] as (id, len), read straight from RAM.
    func usedElement(slot: Int) -> (id: UInt32, len: UInt32) {
        let e = ram.pointer(driver.usedGPA + 4 + 8 * UInt64(slot))
        return (e.load(as: UInt32.self), e.load(fromByteOffset: 4, as: UInt32.self))
    }
}

/// Pops the next head and walks its chain into `seg`.
@discardableResult
func walkNext(_ vq: SplitVirtqueue, _ seg: inout ChainSegments) throws -> UInt16 {
    guard let head = try vq.popHead() else { throw TestSupportError("no chain on the avail ring") }
    try vq.readChain(head: head, into: &seg)
    return head
}

/// Asserts that walking the next chain fails with exactly `expected`.
func assertChainRejected(_ vq: SplitVirtqueue, capacity: Int = 16, _ expected: VirtqueueError,
                         file: StaticString = #filePath, line: UInt = #line) {
    var seg = ChainSegments(capacity: capacity)
    defer { seg.deallocate() }
    XCTAssertThrowsError(try walkNext(vq, &seg), file: file, line: line) { error in
        XCTAssertEqual(error as? VirtqueueError, expected, file: file, line: line)
    }
}

/// The text of a ringAddressInvalid error, or nil for anything else.
func ringAddressProblem(_ error: Error) -> String? {
    if case .ringAddressInvalid(let what)? = error as? VirtqueueError { return what }
    return nil
}

/// Polls `condition` until true or `timeout` seconds pass (a safety net, not a timing assertion).
func waitUntil(timeout: Double = 10, _ condition: () -> Bool) -> Bool {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    let deadline = Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9 + timeout
    while true {
        if condition() { return true }
        clock_gettime(CLOCK_MONOTONIC, &ts)
        if Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9 > deadline { return false }
        usleep(200)
    }
}

/// Whether an fd becomes readable within `timeoutMs` (0: right now).
func isReadable(_ fd: Int32, timeoutMs: Int32) -> Bool {
    var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    return poll(&p, 1, timeoutMs) == 1 && p.revents & Int16(POLLIN) != 0
}
