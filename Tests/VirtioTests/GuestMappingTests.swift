#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import VhostUserTestSupport
import Virtio
import XCTest

/// The SIGBUS guard over guest mappings (CVdevd/guest_fault.c): a file that shrinks under a mapping turns it into
/// zero memory and marks it vanished instead of killing the process.
final class GuestMappingTests: XCTestCase {
    func testReadPastTruncatedFileReturnsZeroesAndMarksRegionVanished() throws {
        let shm = "/dev/shm/vdevd-vt-\(getpid())-mapping"
        defer { unlink(shm) }
        let ram = try GuestRAM(size: 64 << 10, guestAddress: 0x1000_0000, backing: .file(shm))
        ram.write(0x1000_0000 + 100, [1, 2, 3, 4])
        let region = try mapRegion(ram)
        let memory = GuestMemory(regions: [region])
        var got = [UInt8](repeating: 0xff, count: 4)
        XCTAssertTrue(got.withUnsafeMutableBytes { memory.read(gpa: 0x1000_0000 + 100, into: $0) })
        XCTAssertEqual(got, [1, 2, 3, 4])
        XCTAssertFalse(memory.vanished)
        let before = GuestMapping.faultGeneration
        XCTAssertEqual(ftruncate(ram.fd, 0), 0)
        XCTAssertTrue(got.withUnsafeMutableBytes { memory.read(gpa: 0x1000_0000 + 100, into: $0) })
        XCTAssertEqual(got, [0, 0, 0, 0])
        XCTAssertTrue(memory.vanished)
        XCTAssertTrue(region.vanished)
        XCTAssertEqual(GuestMapping.faultGeneration, before + 1)
    }

    func testMemfdMappedIsSealedAgainstShrinking() throws {
        let ram = try GuestRAM(size: 64 << 10)
        let region = try mapRegion(ram)
        XCTAssertEqual(ftruncate(ram.fd, 4096), -1)
        XCTAssertEqual(errno, EPERM)
        XCTAssertEqual(ftruncate(ram.fd, 128 << 10), 0, "growing stays allowed")
        withExtendedLifetime(region) {}
    }

    func testUnsealableMemfdIsRefused() throws {
        let ram = try GuestRAM(size: 64 << 10, backing: .unsealableMemfd)
        XCTAssertThrowsError(try mapRegion(ram)) {
            XCTAssertTrue("\($0)".contains("memfd cannot be sealed against shrinking"), "\($0)")
        }
    }
}
