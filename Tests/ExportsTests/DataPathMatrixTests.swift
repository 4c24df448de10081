#if canImport(Glibc)
import Glibc
#endif
import Blk
import Exports
import Foundation
import VhostUserTestSupport
import XCTest

/// The same requests through every way a request can reach the file: io_uring, AIO, and inline service of
/// images on a memory file system (tmpfs). Each must give the same bytes and statuses.
final class DataPathMatrixTests: ExportTestCase {
    var shmDir: String?

    override func tearDown() {
        if let shmDir { try? FileManager.default.removeItem(atPath: shmDir) }
        super.tearDown()
    }

    /// A fresh directory on tmpfs, or nil when /dev/shm is not one.
    func tmpfsDir() throws -> String? {
        let mounts = (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) ?? ""
        guard mounts.split(separator: "\n").contains(where: { $0.split(separator: " ").prefix(3).dropFirst().elementsEqual(["/dev/shm", "tmpfs"]) })
        else { return nil }
        shmDir = try? makeTemporaryDirectory("/dev/shm/vdevd-xt-")
        return shmDir
    }

    /// Serves a fresh image in `where` (nil: the test's dir on the root file system) with `options`.
    func serveImage(id: String, in base: String?, options: String) throws -> Served {
        let img = "\(base ?? dir!)/\(id).img"
        try createImage(at: img, size: 8 << 20)
        return try serve(id: id, options: options, image: img)
    }

    /// Everything but WRITE_ZEROES without unmap, which a file system may lack (checked separately).
    func exerciseCore(_ s: Served, _ label: String) throws {
        let c = try BlkTestClient(socket: s.socket)
        let capacity: UInt64 = (8 << 20) / 512
        XCTAssertEqual(try c.read(sector: 8, count: 4096).1, imageBytes(8 * 512, 4096), label)
        let data = payload(8192, seed: 90)
        XCTAssertEqual(try c.write(sector: 128, data: data), Status.ok, label)
        XCTAssertEqual(try readFile(s.image, offset: 128 * 512, count: 8192), data, label)
        XCTAssertEqual(try c.read(sector: 128, count: 8192).1, data, label)
        let sg = try rawRequest(Ring(c), type: BlkType.in, sector: 128, inLengths: [512, 4096, 3584])
        XCTAssertEqual(sg.status, Status.ok, label)
        XCTAssertEqual(sg.data, data, label)
        XCTAssertEqual(try c.run(type: .flush, sector: 0).status, Status.ok, label)
        let before = allocatedBlocks(s.image)
        XCTAssertEqual(try c.ranges(.discard, [(2048, 2048, 0)]), Status.ok, label)
        XCTAssertGreaterThanOrEqual(before - allocatedBlocks(s.image), 2048, label)
        XCTAssertEqual(try c.ranges(.writeZeroes, [(4096, 16, 1)]), Status.ok, label)
        XCTAssertEqual(try readFile(s.image, offset: 4096 * 512, count: 8192), [UInt8](repeating: 0, count: 8192), label)
        XCTAssertEqual(try c.write(sector: capacity - 1, data: payload(1024, seed: 91)), Status.ioerr, label)
        XCTAssertEqual(try c.read(sector: 0, count: 100).0, Status.ioerr, label)
        XCTAssertEqual(try rawRequest(Ring(c), type: 99, sector: 0, inLengths: [512]).status, Status.unsupp, label)
        let id = try c.run(type: .getID, sector: 0, readLength: 20)
        XCTAssertEqual(Array(id.data.prefix(s.export.id.utf8.count)), Array(s.export.id.utf8), label)
        XCTAssertEqual(s.counter(.writtenBytes), 8192, label)
        XCTAssertEqual(s.counter(.readBytes), 4096 + 8192 + 8192, label)
    }

    func writeZeroesWithoutUnmap(_ s: Served) throws -> UInt8 {
        let c = try BlkTestClient(socket: s.socket)
        let st = try c.ranges(.writeZeroes, [(64, 8, 0)])
        if st == Status.ok {
            XCTAssertEqual(try readFile(s.image, offset: 64 * 512, count: 4096), [UInt8](repeating: 0, count: 4096))
        }
        return st
    }

    /// On tmpfs zeros are written by hand on the poller, so one range is capped at 1 MiB (2048 sectors) and
    /// the config says so; a file system with FALLOC_FL_ZERO_RANGE keeps the 1 GiB limit.
    func testWriteZeroesLimitFollowsTheFileSystem() throws {
        guard let shm = try tmpfsDir() else { throw XCTSkip("/dev/shm is not tmpfs") }
        // 32 MiB, so the refused request below is refused for its length, not for running past the device.
        let shmImage = "\(shm)/wzl-shm.img"
        try createImage(at: shmImage, size: 32 << 20)
        let onShm = try serve(id: "wzl-shm", image: shmImage)
        let onDisk = try serveImage(id: "wzl-disk", in: nil, options: "")
        let c = try BlkTestClient(socket: onShm.socket)
        XCTAssertEqual(try c.frontend.getConfig(offset: 48, size: 4).u32(0), 2048, "max_write_zeroes_sectors on tmpfs")
        XCTAssertEqual(try c.frontend.getConfig(offset: 36, size: 4).u32(0), 1 << 21, "discard keeps its limit")
        let d = try BlkTestClient(socket: onDisk.socket)
        XCTAssertEqual(try d.frontend.getConfig(offset: 48, size: 4).u32(0), 1 << 21, "max_write_zeroes_sectors on disk")
        // One sector past the tmpfs limit is refused, and the file keeps its bytes.
        XCTAssertEqual(try c.ranges(.writeZeroes, [(0, 2056, 0)]), Status.ioerr)
        XCTAssertEqual(try readFile(onShm.image, offset: 0, count: 4096), imageBytes(0, 4096))
        XCTAssertEqual(try c.ranges(.writeZeroes, [(0, 2048, 0)]), Status.ok)
        XCTAssertEqual(try readFile(onShm.image, offset: 0, count: 4096), [UInt8](repeating: 0, count: 4096))
    }

    func testIOUringOnDisk() throws {
        let s = try serveImage(id: "uring", in: nil, options: "engine=io_uring")
        try exerciseCore(s, "io_uring")
        XCTAssertEqual(try writeZeroesWithoutUnmap(s), Status.ok)
    }

    func testAIOOnDisk() throws {
        let s = try serveImage(id: "aio", in: nil, options: "engine=aio")
        try exerciseCore(s, "aio")
        XCTAssertEqual(try writeZeroesWithoutUnmap(s), Status.ok)
    }

    func testAIOWithDirectIO() throws {
        let s = try serveImage(id: "aiod", in: nil, options: "engine=aio,direct=on")
        try exerciseCore(s, "aio+direct")
    }

    func testTmpfsInline() throws {
        guard let shm = try tmpfsDir() else { throw XCTSkip("/dev/shm is not tmpfs") }
        let s = try serveImage(id: "shm", in: shm, options: "")
        XCTAssertTrue(logs.contains("served inline"), "\(logs.all)")
        try exerciseCore(s, "tmpfs inline")
    }

    func testTmpfsThroughIOUring() throws {
        guard let shm = try tmpfsDir() else { throw XCTSkip("/dev/shm is not tmpfs") }
        let s = try serveImage(id: "shmu", in: shm, options: "inline-io=off")
        XCTAssertFalse(logs.contains("served inline"))
        try exerciseCore(s, "tmpfs io_uring")
    }

    func testTmpfsThroughAIO() throws {
        guard let shm = try tmpfsDir() else { throw XCTSkip("/dev/shm is not tmpfs") }
        let s = try serveImage(id: "shma", in: shm, options: "inline-io=off,engine=aio")
        try exerciseCore(s, "tmpfs aio")
    }

    /// WRITE_ZEROES is offered for every image, so it must work on every image.
    func testWriteZeroesWithoutUnmapOnTmpfs() throws {
        guard let shm = try tmpfsDir() else { throw XCTSkip("/dev/shm is not tmpfs") }
        var failing: [String] = []
        for (id, opts) in [("wz-inline", ""), ("wz-uring", "inline-io=off"), ("wz-aio", "inline-io=off,engine=aio")] {
            let s = try serveImage(id: id, in: shm, options: opts)
            let st = try writeZeroesWithoutUnmap(s)
            if st != Status.ok { failing.append("\(id): status \(st)") }
        }
        if !failing.isEmpty {
            return XCTFail("WRITE_ZEROES without the unmap flag fails (status 1 = IOERR) for an image on tmpfs "
                          + "[\(failing.joined(separator: ", "))]: Sources/Blk/BlkQueue.swift startRanges() always uses "
                          + "fallocate(FALLOC_FL_ZERO_RANGE), which tmpfs does not support (EOPNOTSUPP), with no "
                          + "fallback (write zeroes, or punch a hole when the file is not a block device), while "
                          + "BlkDevice still offers VIRTIO_BLK_F_WRITE_ZEROES")
        }
    }
}
