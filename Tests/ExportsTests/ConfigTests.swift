import Blk
import Exports
import VhostUserTestSupport
import XCTest

/// Config space through GET_CONFIG / SET_CONFIG (virtio 1.3, 5.2.4 and 5.2.5).
final class ConfigTests: ExportTestCase {
    func testConfigSpaceWith512ByteBlocks() throws {
        // A tail shorter than a sector is not addressable.
        let s = try serve(options: "num-queues=2", imageSize: (8 << 20) + 512 + 100)
        let fe = try VhostUserFrontend(path: s.socket)
        let c = try config(fe)
        XCTAssertEqual(c.raw.count, 60)
        XCTAssertEqual(c.capacity, UInt64((8 << 20) + 512) / 512)
        XCTAssertEqual(c.sizeMax, BlkOptions.sizeMax)
        XCTAssertGreaterThan(c.sizeMax, 0)
        XCTAssertEqual(c.segMax, BlkOptions.segMax)
        XCTAssertGreaterThan(c.segMax, 0)
        XCTAssertEqual(c.blkSize, 512)
        XCTAssertEqual(c.physicalBlockExp, 0)
        XCTAssertEqual(c.minIOSize, 1)
        XCTAssertEqual(c.writeback, 1)  // write-cache defaults to on
        XCTAssertEqual(c.numQueues, 2)
        XCTAssertEqual(c.maxDiscardSectors, BlkOptions.maxDiscardSectors)
        XCTAssertEqual(c.maxDiscardSeg, BlkOptions.maxDiscardSegments)
        XCTAssertEqual(c.discardSectorAlignment, 1)
        XCTAssertEqual(c.maxWriteZeroesSectors, BlkOptions.maxDiscardSectors)
        XCTAssertEqual(c.maxWriteZeroesSeg, BlkOptions.maxDiscardSegments)
        XCTAssertGreaterThan(c.maxDiscardSectors, 0)
        XCTAssertGreaterThan(c.maxDiscardSeg, 0)
        XCTAssertEqual(c.writeZeroesMayUnmap, 1)
    }

    func testConfigSpaceWith4096ByteBlocks() throws {
        // 8 MiB + 512: the last 512 bytes are less than a logical block, so capacity stops at 8 MiB.
        let s = try serve(options: "logical-block-size=4096", imageSize: (8 << 20) + 512)
        let fe = try VhostUserFrontend(path: s.socket)
        let c = try config(fe)
        XCTAssertEqual(c.blkSize, 4096)
        XCTAssertEqual(c.capacity, UInt64(8 << 20) / 512)
        XCTAssertEqual(c.discardSectorAlignment, 8)  // in 512-byte sectors
        XCTAssertEqual(c.numQueues, 1)
    }

    func testCapacityLimitsRequestsWith4096ByteBlocks() throws {
        let s = try serve(options: "logical-block-size=4096", imageSize: (8 << 20) + 512)
        let c = try BlkTestClient(socket: s.socket)
        let capacity = UInt64(8 << 20) / 512
        XCTAssertEqual(try c.read(sector: capacity - 8, count: 4096).0, Status.ok)
        // The partial block at the end of the file is outside the device.
        XCTAssertEqual(try c.read(sector: capacity, count: 512).0, Status.ioerr)
        // DISCARD ranges must be aligned to the logical block.
        XCTAssertEqual(try c.ranges(.discard, [(1, 8, 0)]), Status.ioerr)
        XCTAssertEqual(try c.ranges(.discard, [(8, 7, 0)]), Status.ioerr)
        XCTAssertEqual(try c.ranges(.discard, [(8, 8, 0)]), Status.ok)
    }

    func testWriteCacheOffStartsWriteThrough() throws {
        let s = try serve(options: "write-cache=off")
        let c = try BlkTestClient(socket: s.socket)
        XCTAssertEqual(try c.frontend.getConfig(offset: 32, size: 1), [0])
        let data = payload(4096, seed: 3)
        XCTAssertEqual(try c.write(sector: 16, data: data), Status.ok)
        XCTAssertEqual(try readFile(s.image, offset: 16 * 512, count: 4096), data)
    }

    func testSetConfigWritebackIsAcceptedAndReadBack() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        XCTAssertEqual(try c.frontend.getConfig(offset: 32, size: 1), [1])
        XCTAssertEqual(try c.frontend.setConfig(offset: 32, bytes: [0]), 0)
        XCTAssertEqual(try c.frontend.getConfig(offset: 32, size: 1), [0])
        XCTAssertEqual(try config(c.frontend).writeback, 0)
        // Writes still land in write-through mode.
        let data = payload(1024, seed: 9)
        XCTAssertEqual(try c.write(sector: 4, data: data), Status.ok)
        XCTAssertEqual(try readFile(s.image, offset: 4 * 512, count: 1024), data)
        XCTAssertEqual(try c.frontend.setConfig(offset: 32, bytes: [1]), 0)
        XCTAssertEqual(try c.frontend.getConfig(offset: 32, size: 1), [1])
        XCTAssertTrue(logs.contains("config write at offset 32"))
    }

    func testSetConfigOutsideWritebackIsRefused() throws {
        let s = try serve()
        let fe = try ackingFrontend(s.socket)
        let before = try config(fe).raw
        XCTAssertNotEqual(try fe.setConfig(offset: 0, bytes: [UInt8](repeating: 0xff, count: 8)), 0)   // capacity
        XCTAssertNotEqual(try fe.setConfig(offset: 20, bytes: [0, 0x10, 0, 0]), 0)                     // blk_size
        XCTAssertNotEqual(try fe.setConfig(offset: 34, bytes: [4, 0]), 0)                              // num_queues
        XCTAssertNotEqual(try fe.setConfig(offset: 31, bytes: [0, 0]), 0)                              // spans writeback
        XCTAssertNotEqual(try fe.setConfig(offset: 32, bytes: [2]), 0)                                 // not 0 or 1
        XCTAssertEqual(try config(fe).raw, before)
    }

    func testReadonlyExportRefusesSetConfig() throws {
        let s = try serve(options: "readonly=on")
        let fe = try ackingFrontend(s.socket)
        let before = try fe.getConfig(offset: 32, size: 1)
        XCTAssertNotEqual(try fe.setConfig(offset: 32, bytes: [before[0] ^ 1]), 0)
        XCTAssertEqual(try fe.getConfig(offset: 32, size: 1), before)
    }

    func testPartialGetConfig() throws {
        let s = try serve(options: "logical-block-size=4096")
        let fe = try VhostUserFrontend(path: s.socket)
        XCTAssertEqual(try fe.getConfig(offset: 20, size: 4).u32(0), 4096)
        XCTAssertEqual(try fe.getConfig(offset: 0, size: 8).u64(0), UInt64(8 << 20) / 512)
        XCTAssertEqual(try fe.getConfig(offset: 34, size: 2), [1, 0])
        // Past the end of the defined fields: zeros, not an error.
        XCTAssertEqual(try fe.getConfig(offset: 60, size: 8), [UInt8](repeating: 0, count: 8))
    }
}
