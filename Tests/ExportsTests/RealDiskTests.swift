#if canImport(Glibc)
import Glibc
#endif
import Blk
import CVdevd
import Exports
import VhostUserTestSupport
import XCTest

/// What real disks and file systems do that tmpfs never does: short transfers, O_DIRECT alignment rules,
/// block-device discard, more requests than the completion queue holds.
final class RealDiskTests: ExportTestCase {
    func blkDevice(_ s: Served) throws -> BlkDevice {
        try XCTUnwrap(s.export.device as? BlkDevice)
    }

    #if DEBUG
    func testShortTransfersAreResubmittedUntilDone() throws {
        let s = try serve(imageSize: 1 << 20)
        // The engine reports at most 4 KiB done per submission, as a disk that stops early would.
        try blkDevice(s).shortTransferLimitForTests = 4096
        let c = try BlkTestClient(socket: s.socket)
        let data = payload(64 << 10, seed: 5)
        XCTAssertEqual(try c.write(sector: 64, data: data), Status.ok)
        XCTAssertEqual(try readFile(s.image, offset: 64 * 512, count: data.count), data)
        // A read scattered over three buffers of odd sizes: the rest of each goes again, into the right place.
        let r = Ring(c)
        let res = try rawRequest(r, type: BlkType.in, sector: 64, inLengths: [512 * 3, 512 * 100, 512 * 25])
        XCTAssertEqual(res.status, Status.ok)
        XCTAssertEqual(res.data, data)
        XCTAssertEqual(s.counter(.shortTransfers), 15 + 15)
        XCTAssertEqual(s.counter(.errors), 0)
        XCTAssertEqual(s.counter(.readBytes), UInt64(data.count))
    }
    #endif

    func testReadBeyondAShrunkFileFailsInsteadOfLooping() throws {
        let s = try serve(imageSize: 1 << 20)
        let c = try BlkTestClient(socket: s.socket)
        // The file shrinks under the export: a read across the new end gets a short read, then nothing.
        XCTAssertEqual(truncate(s.image, 256 << 10), 0)
        XCTAssertEqual(try c.read(sector: (256 << 10) / 512 - 8, count: 8192).0, Status.ioerr)
        XCTAssertEqual(s.counter(.shortTransfers), 1)
        // The queue goes on serving.
        XCTAssertEqual(try c.read(sector: 0, count: 4096).1, imageBytes(0, 4096))
    }

    /// O_DIRECT with guest buffers that break the backing's alignment (EINVAL from the kernel without a bounce).
    func misalignedDirectIO(engine: String) throws {
        let s = try serve(options: "direct=on,engine=\(engine)", imageSize: 4 << 20)
        let device = try blkDevice(s)
        guard device.dioMemoryAlignment > 8 else {
            throw XCTSkip("this file system takes O_DIRECT buffers at any 8-byte boundary")
        }
        let c = try BlkTestClient(socket: s.socket)
        let r = Ring(c)
        let data = payload(8192, seed: 7)
        // Two segments, each at +8 bytes: written through the bounce buffer, then read back the same way.
        let w = try rawRequest(r, type: BlkType.out, sector: 16, out: [Array(data[0..<4096]), Array(data[4096...])],
                               bufferOffset: 8)
        XCTAssertEqual(w.status, Status.ok)
        XCTAssertEqual(try readFile(s.image, offset: 16 * 512, count: data.count), data)
        let rd = try rawRequest(r, type: BlkType.in, sector: 16, inLengths: [4096, 4096], bufferOffset: 8)
        XCTAssertEqual(rd.status, Status.ok)
        XCTAssertEqual(rd.data, data)
        // A segment of a whole number of 512-byte sectors but not of the backing's block, at an aligned address.
        if device.dioOffsetAlignment > 512 {
            let odd = try rawRequest(r, type: BlkType.in, sector: 16, inLengths: [512, 8192 - 512])
            XCTAssertEqual(odd.status, Status.ok)
            XCTAssertEqual(odd.data, data)
        }
        // Aligned requests do not bounce.
        let bouncedSoFar = s.counter(.bounced)
        XCTAssertEqual(try c.read(sector: 16, count: 8192).1, data)
        XCTAssertEqual(s.counter(.bounced), bouncedSoFar)
        XCTAssertGreaterThanOrEqual(bouncedSoFar, 2)
        XCTAssertEqual(s.counter(.errors), 0)
    }

    func testMisalignedBuffersWithDirectIOThroughIOUring() throws { try misalignedDirectIO(engine: "io_uring") }

    func testMisalignedBuffersWithDirectIOThroughAIO() throws { try misalignedDirectIO(engine: "aio") }

    func testMisalignedRequestsBeyondTheBounceBufferWaitTheirTurn() throws {
        let s = try serve(options: "direct=on", imageSize: 32 << 20)
        guard try blkDevice(s).dioMemoryAlignment > 8 else { throw XCTSkip("no alignment rule to break here") }
        let c = try BlkTestClient(socket: s.socket, queueSize: 128, ramSize: 96 << 20)
        let r = Ring(c)
        // 24 misaligned 1 MiB reads at once: 24 MiB, more than the 16 MiB bounce buffer holds.
        var subs: [(head: UInt16, ins: [(UInt64, UInt32)], status: UInt64?, i: Int)] = []
        for i in 0..<24 {
            let sub = submitRaw(r, header: requestHeader(type: BlkType.in, sector: UInt64(i * 2048)),
                                inLengths: [1 << 20], notify: i == 23, bufferOffset: 8)
            subs.append((sub.head, sub.ins, sub.status, i))
        }
        var seen = Set<UInt16>()
        for _ in 0..<24 {
            let u = try XCTUnwrap(c.queues[0].waitUsed(), "a request waiting for the bounce buffer never completed")
            seen.insert(u.head)
        }
        XCTAssertEqual(seen, Set(subs.map(\.head)))
        for sub in subs {
            XCTAssertEqual(c.ram.read(sub.status!, 1), [Status.ok])
            XCTAssertEqual(c.ram.read(sub.ins[0].0, 1 << 20), imageBytes(sub.i << 20, 1 << 20), "request \(sub.i)")
        }
        XCTAssertEqual(s.counter(.requests), 24)
        XCTAssertEqual(s.counter(.bounced), 24)
    }

    func testMoreRequestsThanTheCompletionQueueHolds() throws {
        // A ring of 16 entries has 64 completion entries: 80 requests at once must wait their turn, not overflow.
        ringEntries = 16
        let s = try serve(options: "direct=on", imageSize: 4 << 20)
        let c = try BlkTestClient(socket: s.socket, queueSize: 256)
        let r = Ring(c)
        var subs: [(UInt16, [(UInt64, UInt32)], UInt64?, Int)] = []
        for i in 0..<80 {
            let sub = submitRaw(r, header: requestHeader(type: BlkType.in, sector: UInt64(i * 8)),
                                inLengths: [4096], notify: i == 79)
            subs.append((sub.head, sub.ins, sub.status, i))
        }
        var seen = Set<UInt16>()
        for _ in 0..<80 { seen.insert(try XCTUnwrap(c.queues[0].waitUsed()).head) }
        XCTAssertEqual(seen.count, 80)
        for (_, ins, st, i) in subs {
            XCTAssertEqual(c.ram.read(st!, 1), [Status.ok])
            XCTAssertEqual(c.ram.read(ins[0].0, 4096), imageBytes(i * 4096, 4096))
        }
    }

    func testDiscardAndWriteZeroesOnABlockDevice() throws {
        let loop = try LoopDevice(backingFile: path("disk.img"), size: 8 << 20, direct: true)
        let s = try serve(options: "direct=on", image: loop.path)
        let c = try BlkTestClient(socket: s.socket)
        let data = payload(1 << 20, seed: 11)
        XCTAssertEqual(try c.write(sector: 2048, data: data), Status.ok)
        XCTAssertEqual(try c.write(sector: 6144, data: data), Status.ok)
        XCTAssertEqual(try c.run(type: .flush, sector: 0).status, Status.ok)
        let before = allocatedBlocks(loop.backingFile)
        // DISCARD (BLKDISCARD on the loop device punches a hole in its file) and WRITE_ZEROES, both with unmap.
        XCTAssertEqual(try c.ranges(.discard, [(2048, 2048, 0)]), Status.ok)
        XCTAssertEqual(try c.ranges(.writeZeroes, [(6144, 1024, 1)]), Status.ok)
        XCTAssertEqual(try c.read(sector: 2048, count: 1 << 20).1, [UInt8](repeating: 0, count: 1 << 20))
        XCTAssertEqual(try c.read(sector: 6144, count: 512 << 10).1, [UInt8](repeating: 0, count: 512 << 10))
        XCTAssertEqual(try c.read(sector: 7168, count: 512 << 10).1, Array(data[(512 << 10)...]))
        XCTAssertEqual(try readFile(loop.backingFile, offset: 2048 * 512, count: 4096), [UInt8](repeating: 0, count: 4096))
        XCTAssertLessThan(allocatedBlocks(loop.backingFile), before, "the discard freed nothing in the loop's file")
        XCTAssertEqual(s.counter(.errors), 0)
    }
}
