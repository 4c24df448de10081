#if canImport(Glibc)
import Glibc
#endif
import Blk
import CVdevd
import Exports
import VhostUserTestSupport
import XCTest

/// How the kind of backing decides the serving path: inline on the poller only for a regular file on a memory
/// file system; a block device (whose node lives on devtmpfs) and a disk file system always go through the engine.
final class BackingTests: ExportTestCase {
    /// A folder on tmpfs for this test, removed at tear-down.
    func tmpfsDir() throws -> String {
        guard let d = try? makeTemporaryDirectory("/dev/shm/vdevd-xt-") else { throw XCTSkip("no tmpfs at /dev/shm") }
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }

    /// Whether the file at path is on a memory file system, as the shim sees it.
    func onMemoryFS(_ path: String) -> Bool {
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        var info = vdv_backing_info()
        return fd >= 0 && vdv_backing_probe(fd, &info) == 0 && info.on_memory_fs != 0
    }

    func device(_ path: String, _ extra: (inout BlkOptions) -> Void = { _ in }) throws -> BlkDevice {
        var o = BlkOptions(id: "d", path: path)
        extra(&o)
        return try BlkDevice(options: o)
    }

    func testRegularFileOnTmpfsIsServedInline() throws {
        let img = try tmpfsDir() + "/a.img"
        try createImage(at: img, size: 1 << 20)
        let d = try device(img)
        XCTAssertTrue(onMemoryFS(img))
        XCTAssertTrue(d.servesInline)
        XCTAssertFalse(d.isBlockDevice)
        XCTAssertTrue(d.notes.contains { $0.contains("memory file system") }, "\(d.notes)")
        XCTAssertFalse(try device(img) { $0.inlineIO = false }.servesInline)
    }

    func testRegularFileOnDiskFileSystemIsNotServedInline() throws {
        // The test folder is under /tmp; on these machines that is the root file system (ext4).
        let img = path("b.img")
        try createImage(at: img, size: 1 << 20)
        guard !onMemoryFS(img) else { throw XCTSkip("\(dir!) is on tmpfs here") }
        let d = try device(img)
        XCTAssertFalse(d.servesInline)
        XCTAssertFalse(d.isBlockDevice)
        XCTAssertTrue(d.notes.isEmpty, "\(d.notes)")
    }

    func testBlockDeviceIsNeverServedInlineEvenOverTmpfs() throws {
        // The most deceptive case: the device node is on devtmpfs and the loop's backing file on tmpfs.
        let loop = try LoopDevice(backingFile: try tmpfsDir() + "/loop.img", size: 4 << 20)
        let d = try device(loop.path)
        XCTAssertTrue(d.isBlockDevice)
        XCTAssertFalse(d.servesInline)
        XCTAssertEqual(d.sizeBytes, 4 << 20)
        XCTAssertEqual(d.logicalBlockSize, 512)
        // Data goes through io_uring to the device and lands in the loop's backing file.
        let s = try serve(image: loop.path)
        let c = try BlkTestClient(socket: s.socket)
        let data = payload(8192, seed: 3)
        XCTAssertEqual(try c.write(sector: 16, data: data), Status.ok)
        let (st, back) = try c.read(sector: 16, count: 8192)
        XCTAssertEqual(st, Status.ok)
        XCTAssertEqual(back, data)
        XCTAssertEqual(try c.run(type: .flush, sector: 0).status, Status.ok)
        XCTAssertEqual(try readFile(loop.backingFile, offset: 16 * 512, count: 8192), data)
        XCTAssertEqual(s.counter(.requests), 3)
        XCTAssertFalse(logs.all.contains { $0.contains("memory file system") })
    }

    func testDirectIORaisesTheLogicalBlockSizeToTheDevices() throws {
        let loop = try LoopDevice(backingFile: path("loop4k.img"), size: 4 << 20, sectorSize: 4096, direct: true)
        let buffered = try device(loop.path)
        XCTAssertEqual(buffered.logicalBlockSize, 512, "the page cache takes 512-byte I/O on a 4K device")
        let d = try device(loop.path) { $0.direct = true }
        XCTAssertEqual(d.logicalBlockSize, 4096)
        XCTAssertGreaterThanOrEqual(d.dioOffsetAlignment, 4096)
        XCTAssertTrue(d.notes.contains { $0.contains("logical-block-size raised from 512 to 4096") }, "\(d.notes)")
        // The guest sees 4096-byte blocks and its aligned I/O works with O_DIRECT.
        let s = try serve(options: "direct=on", image: loop.path)
        let c = try BlkTestClient(socket: s.socket)
        XCTAssertEqual(try config(c.frontend).blkSize, 4096)
        let data = payload(4096, seed: 9)
        XCTAssertEqual(try c.write(sector: 8, data: data), Status.ok)
        XCTAssertEqual(try c.read(sector: 8, count: 4096).1, data)
    }
}
