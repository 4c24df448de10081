import XCTest
import Virtio
import VhostUserTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// GuestMemory and MemoryRegion over real memfds: the test writes through its own mapping (the guest's view),
/// the code under test reads through the daemon's separate mapping of the same pages.
final class GuestMemoryTests: XCTestCase {
    let base: UInt64 = 0x10_0000
    let size: UInt64 = 0x1_0000

    func testTranslatesGuestPhysicalAddressIntoDaemonMapping() throws {
        let ram = try GuestRAM(size: size, guestAddress: base)
        let region = try mapRegion(ram)
        let memory = GuestMemory(regions: [region])
        ram.write(base + 0x123, [1, 2, 3, 4])

        let p = try XCTUnwrap(memory.translate(gpa: base + 0x123, length: 4))
        XCTAssertEqual(p, region.host + 0x123)
        XCTAssertNotEqual(p, ram.pointer(base + 0x123), "must be the daemon's mapping, not the test's")
        XCTAssertEqual(bytes(p, 4), [1, 2, 3, 4])
        // A store through the daemon's mapping is what the guest sees.
        p.storeBytes(of: 0xAB, as: UInt8.self)
        XCTAssertEqual(ram.read(base + 0x123, 1), [0xAB])
        // The whole region and its last byte are in range.
        XCTAssertEqual(memory.translate(gpa: base, length: size), region.host)
        XCTAssertEqual(memory.translate(gpa: base + size - 1, length: 1), region.host + Int(size - 1))
    }

    func testTranslatesFrontendUserAddressIntoDaemonMapping() throws {
        let ram = try GuestRAM(size: size, guestAddress: base)
        let region = try mapRegion(ram)
        let memory = GuestMemory(regions: [region])
        ram.write(base + 0x200, [9, 8, 7])

        let p = try XCTUnwrap(memory.translate(userAddress: ram.userAddress + 0x200, length: 3))
        XCTAssertEqual(p, region.host + 0x200)
        XCTAssertEqual(bytes(p, 3), [9, 8, 7])
        XCTAssertEqual(memory.translate(userAddress: ram.userAddress, length: size), region.host)
        XCTAssertNil(memory.translate(userAddress: ram.userAddress + 0x200, length: size - 0x200 + 1))
        XCTAssertNil(memory.translate(userAddress: ram.userAddress - 1, length: 1))
        XCTAssertNil(memory.translate(userAddress: ram.userAddress + size, length: 1))
        // A guest-physical address is not a user address.
        XCTAssertNil(memory.translate(userAddress: base + 0x200, length: 1))
    }

    func testTranslateReturnsNilOutsideGuestMemory() throws {
        let ram = try GuestRAM(size: size, guestAddress: base)
        let memory = GuestMemory(regions: [try mapRegion(ram)])
        XCTAssertNil(memory.translate(gpa: base - 1, length: 1), "byte before the region")
        XCTAssertNil(memory.translate(gpa: base + size, length: 1), "byte after the region")
        XCTAssertNil(memory.translate(gpa: base + size - 1, length: 2), "range running off the end")
        XCTAssertNil(memory.translate(gpa: base, length: size + 1))
        XCTAssertNil(memory.translate(gpa: base + 8, length: UInt64.max), "huge length")
        XCTAssertNil(memory.translate(gpa: UInt64.max, length: 1))
        XCTAssertNil(memory.lookup(gpa: base + size))
        XCTAssertNil(memory.lookup(gpa: 0))
        XCTAssertNil(GuestMemory.empty.translate(gpa: base, length: 1))
    }

    func testLookupReportsBytesLeftInRegion() throws {
        let ram = try GuestRAM(size: size, guestAddress: base)
        let region = try mapRegion(ram)
        let memory = GuestMemory(regions: [region])
        let (p, left) = try XCTUnwrap(memory.lookup(gpa: base + 0x100))
        XCTAssertEqual(p, region.host + 0x100)
        XCTAssertEqual(left, size - 0x100)
        XCTAssertEqual(memory.lookup(gpa: base + size - 1)?.1, 1)
    }

    func testFindsRegionsWhateverOrderTheyAreGivenIn() throws {
        let low = try GuestRAM(size: size, guestAddress: base)
        let high = try GuestRAM(size: size, guestAddress: 0x8000_0000)
        let lowRegion = try mapRegion(low), highRegion = try mapRegion(high)
        let memory = GuestMemory(regions: [highRegion, lowRegion])
        XCTAssertEqual(memory.regions.map(\.guestAddress), [base, 0x8000_0000])
        XCTAssertEqual(memory.translate(gpa: base + 5, length: 1), lowRegion.host + 5)
        XCTAssertEqual(memory.translate(gpa: 0x8000_0005, length: 1), highRegion.host + 5)
        XCTAssertNil(memory.translate(gpa: base + size, length: 1), "gap between the regions")
    }

    func testTranslateRefusesRangeCrossingIntoAdjacentRegion() throws {
        let a = try GuestRAM(size: size, guestAddress: base)
        let b = try GuestRAM(size: size, guestAddress: base + size)
        let memory = GuestMemory(regions: [try mapRegion(a), try mapRegion(b)])
        // Each side is mapped, but no single host pointer covers both: translate is one region only.
        XCTAssertNotNil(memory.translate(gpa: base + size - 4, length: 4))
        XCTAssertNotNil(memory.translate(gpa: base + size, length: 4))
        XCTAssertNil(memory.translate(gpa: base + size - 4, length: 8))
    }

    func testReadAcrossAdjacentRegionsJoinsBothParts() throws {
        let a = try GuestRAM(size: size, guestAddress: base, name: "ram-a")
        let b = try GuestRAM(size: size, guestAddress: base + size, name: "ram-b")
        let memory = GuestMemory(regions: [try mapRegion(a), try mapRegion(b)])
        let data = pattern(300, seed: 3)
        a.write(base + size - 100, Array(data[..<100]))
        b.write(base + size, Array(data[100...]))

        var out = [UInt8](repeating: 0, count: 300)
        let ok = out.withUnsafeMutableBytes { memory.read(gpa: base + size - 100, into: $0) }
        XCTAssertTrue(ok)
        XCTAssertEqual(out, data)
    }

    func testWriteAcrossAdjacentRegionsSplitsAtBoundary() throws {
        let a = try GuestRAM(size: size, guestAddress: base, name: "ram-a")
        let b = try GuestRAM(size: size, guestAddress: base + size, name: "ram-b")
        let memory = GuestMemory(regions: [try mapRegion(b), try mapRegion(a)])
        let data = pattern(256, seed: 4)
        let ok = data.withUnsafeBytes { memory.write(gpa: base + size - 56, from: $0) }
        XCTAssertTrue(ok)
        XCTAssertEqual(a.read(base + size - 56, 56), Array(data[..<56]))
        XCTAssertEqual(b.read(base + size, 200), Array(data[56...]))
        XCTAssertEqual(b.read(base + size + 200, 1), [0], "nothing written past the range")
    }

    func testReadAndWriteFailWhenAnyByteIsOutsideGuestMemory() throws {
        let a = try GuestRAM(size: size, guestAddress: base, name: "ram-a")
        // Not adjacent: a 64 KiB hole between the regions.
        let b = try GuestRAM(size: size, guestAddress: base + 2 * size, name: "ram-b")
        let memory = GuestMemory(regions: [try mapRegion(a), try mapRegion(b)])
        var out = [UInt8](repeating: 0, count: 16)
        XCTAssertFalse(out.withUnsafeMutableBytes { memory.read(gpa: base + size - 8, into: $0) }, "into the hole")
        XCTAssertFalse(out.withUnsafeMutableBytes { memory.read(gpa: base + 3 * size - 8, into: $0) }, "off the end")
        XCTAssertFalse(out.withUnsafeMutableBytes { memory.read(gpa: base - 8, into: $0) }, "before the start")
        XCTAssertFalse(out.withUnsafeBytes { memory.write(gpa: base + size - 8, from: $0) })
        XCTAssertFalse(out.withUnsafeBytes { memory.write(gpa: base + 3 * size - 8, from: $0) })
        XCTAssertTrue(out.withUnsafeMutableBytes { memory.read(gpa: base + 3 * size - 16, into: $0) })
    }

    func testReadNearTopOfAddressSpaceDoesNotWrapToLowMemory() throws {
        let low = try GuestRAM(size: size, guestAddress: 0, name: "low")
        // The highest region MemoryRegion allows: its last byte is UInt64.max - 1.
        let top = try GuestRAM(size: size, guestAddress: UInt64.max - size, name: "top")
        let memory = GuestMemory(regions: [try mapRegion(low), try mapRegion(top)])
        top.write(UInt64.max - 8, pattern(8, seed: 5))
        var out = [UInt8](repeating: 0, count: 16)
        XCTAssertFalse(out.withUnsafeMutableBytes { memory.read(gpa: UInt64.max - 8, into: $0) })
        XCTAssertFalse(out.withUnsafeBytes { memory.write(gpa: UInt64.max - 8, from: $0) })
        XCTAssertEqual(low.read(0, 16), [UInt8](repeating: 0, count: 16), "low memory untouched")
        var last = [UInt8](repeating: 0, count: 8)
        XCTAssertTrue(last.withUnsafeMutableBytes { memory.read(gpa: UInt64.max - 9, into: $0) })
        XCTAssertNil(memory.translate(gpa: UInt64.max - 8, length: 16))
    }

    func testMemoryRegionMapsFromItsMmapOffset() throws {
        let ram = try GuestRAM(size: 4 * 4096, guestAddress: 0)
        ram.write(4096 + 10, [0xDE, 0xAD])
        // The frontend says: guest 0x200000 is at fd offset 4096 (as with a memory backend split in two).
        let region = try MemoryRegion(fd: ram.fd, guestAddress: 0x20_0000, size: 3 * 4096,
                                      userAddress: ram.userAddress + 4096, mmapOffset: 4096)
        let memory = GuestMemory(regions: [region])
        let p = try XCTUnwrap(memory.translate(gpa: 0x20_0000 + 10, length: 2))
        XCTAssertEqual(bytes(p, 2), [0xDE, 0xAD])
        XCTAssertEqual(memory.translate(userAddress: ram.userAddress + 4096 + 10, length: 2), p)
        XCTAssertNil(memory.translate(gpa: 0x20_0000, length: 3 * 4096 + 1))
    }

    func testMemoryRegionRejectsZeroSizeAndWrappingAddresses() throws {
        let ram = try GuestRAM(size: 4096, guestAddress: 0)
        XCTAssertThrowsError(try MemoryRegion(fd: ram.fd, guestAddress: 0, size: 0, userAddress: 0, mmapOffset: 0)) {
            XCTAssertEqual(($0 as? SystemError)?.errno, EINVAL)
        }
        XCTAssertThrowsError(try MemoryRegion(fd: ram.fd, guestAddress: UInt64.max - 100, size: 4096,
                                              userAddress: 0, mmapOffset: 0)) {
            XCTAssertEqual(($0 as? SystemError)?.errno, EINVAL)
        }
        XCTAssertThrowsError(try MemoryRegion(fd: ram.fd, guestAddress: 0, size: 4096,
                                              userAddress: UInt64.max - 100, mmapOffset: 0)) {
            XCTAssertEqual(($0 as? SystemError)?.errno, EINVAL)
        }
        XCTAssertThrowsError(try MemoryRegion(fd: ram.fd, guestAddress: 0, size: MemoryRegion.maxSize + 1,
                                              userAddress: 0, mmapOffset: 0))
    }
}
