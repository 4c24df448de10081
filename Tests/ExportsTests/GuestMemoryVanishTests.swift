#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Exports
import Foundation
import VhostUserTestSupport
import Virtio
import XCTest

/// Issue 14, finding 1: guest memory that disappears under its mapping must not kill the daemon. Memfds are sealed
/// against shrinking, file systems that are not shared memory are refused, and the SIGBUS guard stops only the
/// queue whose memory vanished (export B in the same process keeps serving).
final class GuestMemoryVanishTests: ExportTestCase {
    /// A memfd from a frontend that did not seal it (sealing allowed) is sealed when mapped: shrinking it fails.
    func testUnsealedMemfdIsSealedAgainstShrinkingWhenMapped() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket, ramSize: 4 << 20)
        XCTAssertEqual(try c.read(sector: 2, count: 512).1, imageBytes(2 * 512, 512))
        XCTAssertEqual(ftruncate(c.ram.fd, 0), -1, "the frontend could still shrink guest memory")
        XCTAssertEqual(errno, EPERM)
        XCTAssertEqual(try c.read(sector: 3, count: 512).1, imageBytes(3 * 512, 512))
    }

    /// A memfd made without MFD_ALLOW_SEALING can shrink at any time: refused, and the log names the export.
    func testUnsealableMemfdIsRefusedNamingTheExport() throws {
        let s = try serve(id: "diskA")
        let fe = try ackingFrontend(s.socket)
        let ram = try GuestRAM(size: 1 << 20, guestAddress: 0, backing: .unsealableMemfd)
        XCTAssertNotEqual(try fe.memTableAck([ram]), 0)
        let line = logs.all.first { $0.contains("memfd cannot be sealed against shrinking") }
        XCTAssertNotNil(line, "\(logs.all)")
        XCTAssertTrue(line?.contains("export=diskA") ?? false, line ?? "")
        XCTAssertTrue(line?.contains("F_SEAL_SHRINK") ?? false, line ?? "")
    }

    /// Guest memory in a file on a disk file system (here /tmp, ext4 or overlay) is refused with the file system.
    func testMemoryOnDiskFileSystemIsRefused() throws {
        let s = try serve(id: "diskA")
        let fe = try ackingFrontend(s.socket)
        let ram = try GuestRAM(size: 1 << 20, guestAddress: 0, backing: .file(path("ram.bin")))
        XCTAssertNotEqual(try fe.memTableAck([ram]), 0)
        let line = logs.all.first { $0.contains("not shared memory") }
        XCTAssertNotNil(line, "\(logs.all)")
        XCTAssertTrue(line?.contains("export=diskA") ?? false, line ?? "")
    }

    /// QEMU's memory-backend-file on /dev/shm keeps working (tmpfs: accepted without seals).
    func testSharedMemoryFileIsAccepted() throws {
        let s = try serve()
        let shm = "/dev/shm/vdevd-test-\(getpid())-accepted"
        defer { unlink(shm) }
        let ram = try GuestRAM(size: 4 << 20, guestAddress: 0x1_0000_0000, backing: .file(shm))
        let c = try BlkTestClient(socket: s.socket, ram: ram)
        XCTAssertEqual(try c.read(sector: 5, count: 4096).1, imageBytes(5 * 512, 4096))
    }

    /// A hugetlb memfd with no huge pages to back it: mmap without MAP_NORESERVE reserves them or fails, so the
    /// refusal comes at SET_MEM_TABLE instead of a SIGBUS on first touch.
    func testHugetlbMemoryWithoutReservedPagesIsRefused() throws {
        let meminfo = (try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8)) ?? ""
        let free = meminfo.split(separator: "\n").first { $0.hasPrefix("HugePages_Free:") }
            .flatMap { Int($0.split(separator: " ").last ?? "") }
        guard free == 0 else { throw XCTSkip("huge pages are available here (HugePages_Free \(free.map(String.init) ?? "?"))") }
        let ram: GuestRAM
        do { ram = try GuestRAM(size: 2 << 20, guestAddress: 0, backing: .hugetlbMemfd) } catch {
            throw XCTSkip("no hugetlb memfd on this kernel: \(error)")
        }
        _ = ram  // never touched here: the test's own mapping would fault too
        let s = try serve(id: "diskA")
        let fe = try ackingFrontend(s.socket)
        XCTAssertNotEqual(try fe.memTableAck([ram]), 0)
        XCTAssertTrue(logs.contains("no huge pages left to reserve"), "\(logs.all)")
        fe.disconnect()
        XCTAssertEqual(try BlkTestClient(socket: s.socket).read(sector: 1, count: 512).1, imageBytes(512, 512))
    }

    /// The last line: a file that cannot be sealed (tmpfs, as memory-backend-file on /dev/shm) truncated under the
    /// rings. The poller faults on A's ring; the SIGBUS guard stops A's queue; B in the same process serves on.
    func testTruncatedMemoryUnderRingsStopsOnlyThatQueue() throws {
        let a = try serve(id: "diskA")
        let b = try serve(id: "diskB")
        let shm = "/dev/shm/vdevd-test-\(getpid())-truncated"
        defer { unlink(shm) }
        let ram = try GuestRAM(size: 4 << 20, guestAddress: 0x1_0000_0000, backing: .file(shm))
        let ca = try BlkTestClient(socket: a.socket, ram: ram)
        let cb = try BlkTestClient(socket: b.socket)
        XCTAssertEqual(try ca.read(sector: 1, count: 512).1, imageBytes(512, 512))
        XCTAssertEqual(try cb.read(sector: 1, count: 512).1, imageBytes(512, 512))
        let before = GuestMapping.faultGeneration
        // The frontend pulls the memory away. From here the test never touches its own mapping of it.
        XCTAssertEqual(ftruncate(ram.fd, 0), 0)
        kick(ca.kicks[0])
        XCTAssertTrue(eventually { a.counter(.errors) == 1 }, "\(logs.all)")
        // The error is counted, then reported: the log line may follow the counter by a moment.
        XCTAssertTrue(eventually { logs.contains("queue 0 stopped: guest memory vanished") }, "\(logs.all)")
        XCTAssertGreaterThan(GuestMapping.faultGeneration, before)
        // Export B, on the same poller, goes on; so does the daemon.
        for sector: UInt64 in [0, 7, 100] {
            XCTAssertEqual(try cb.read(sector: sector, count: 4096).1, imageBytes(Int(sector) * 512, 4096))
        }
        XCTAssertEqual(b.counter(.errors), 0)
        // And export A, once that frontend leaves, takes a new one with good memory.
        ca.frontend.disconnect()
        XCTAssertEqual(try BlkTestClient(socket: a.socket).read(sector: 9, count: 512).1, imageBytes(9 * 512, 512))
    }
}
