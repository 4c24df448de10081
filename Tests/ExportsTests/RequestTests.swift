#if canImport(Glibc)
import Glibc
#endif
import Blk
import Exports
import VhostUserTestSupport
import Virtio
import XCTest

/// virtio-blk requests end to end (virtio 1.3, 5.2.6): guest buffers in, file bytes out, status and used length back.
final class RequestTests: ExportTestCase {
    let capacity: UInt64 = (8 << 20) / 512

    func testReadReturnsTheFilesBytes() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        let r = try c.run(type: .read, sector: 0, readLength: 4096)
        XCTAssertEqual(r.status, Status.ok)
        XCTAssertEqual(r.used, 4096 + 1)  // data plus the status byte
        XCTAssertEqual(r.data, imageBytes(0, 4096))
        let tail = try c.run(type: .read, sector: capacity - 3, readLength: 1536)
        XCTAssertEqual(tail.status, Status.ok)
        XCTAssertEqual(tail.data, try readFile(s.image, offset: Int(capacity - 3) * 512, count: 1536))
        XCTAssertEqual(s.counter(.requests), 2)
        XCTAssertEqual(s.counter(.readBytes), 4096 + 1536)
        XCTAssertEqual(s.counter(.errors), 0)
    }

    func testWriteChangesTheFileAtTheRightOffset() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        let data = payload(1024, seed: 1)
        let r = try c.run(type: .write, sector: 100, data: data)
        XCTAssertEqual(r.status, Status.ok)
        XCTAssertEqual(r.used, 1)  // only the status byte was written
        XCTAssertEqual(try readFile(s.image, offset: 100 * 512, count: 1024), data)
        // Neighbours untouched.
        XCTAssertEqual(try readFile(s.image, offset: 99 * 512, count: 512), imageBytes(99 * 512, 512))
        XCTAssertEqual(try readFile(s.image, offset: 102 * 512, count: 512), imageBytes(102 * 512, 512))
        // And the device reads back what it wrote.
        XCTAssertEqual(try c.read(sector: 100, count: 1024).1, data)
        XCTAssertEqual(s.counter(.writtenBytes), 1024)
    }

    func testFlush() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        XCTAssertEqual(try c.write(sector: 8, data: payload(512, seed: 2)), Status.ok)
        let r = try c.run(type: .flush, sector: 0)
        XCTAssertEqual(r.status, Status.ok)
        XCTAssertEqual(r.used, 1)
    }

    func testGetIDIsTheExportIdNulPadded() throws {
        let s = try serve(id: "disk-a")
        let c = try BlkTestClient(socket: s.socket)
        let r = try c.run(type: .getID, sector: 0, readLength: 20)
        XCTAssertEqual(r.status, Status.ok)
        XCTAssertEqual(r.data, Array("disk-a".utf8) + [UInt8](repeating: 0, count: 14))
        XCTAssertEqual(r.used, 21)
    }

    func testGetIDIsTruncatedToTwentyBytes() throws {
        let id = "a-very-long-export-name-0123"
        let s = try serve(id: id)
        let c = try BlkTestClient(socket: s.socket)
        let r = try c.run(type: .getID, sector: 0, readLength: 20)
        XCTAssertEqual(r.status, Status.ok)
        XCTAssertEqual(r.data, Array(id.utf8.prefix(20)))
        XCTAssertEqual(r.used, 21)
    }

    func testDiscardPunchesAHole() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        let before = allocatedBlocks(s.image)
        XCTAssertGreaterThanOrEqual(before, Int(capacity))
        // 1 MiB at 1 MiB.
        XCTAssertEqual(try c.ranges(.discard, [(2048, 2048, 0)]), Status.ok)
        let after = allocatedBlocks(s.image)
        XCTAssertGreaterThanOrEqual(before - after, 2048, "st_blocks \(before) -> \(after)")
        XCTAssertEqual(try readFile(s.image, offset: 2048 * 512, count: 1 << 20), [UInt8](repeating: 0, count: 1 << 20))
        XCTAssertEqual(try readFile(s.image, offset: 2047 * 512, count: 512), imageBytes(2047 * 512, 512))
        XCTAssertEqual(try readFile(s.image, offset: 4096 * 512, count: 512), imageBytes(4096 * 512, 512))
        XCTAssertEqual(fileStat(s.image)?.st_size, 8 << 20)  // size kept
    }

    func testWriteZeroesWithoutUnmap() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        XCTAssertEqual(try c.ranges(.writeZeroes, [(10, 6, 0)]), Status.ok)
        XCTAssertEqual(try readFile(s.image, offset: 10 * 512, count: 6 * 512), [UInt8](repeating: 0, count: 6 * 512))
        XCTAssertEqual(try readFile(s.image, offset: 9 * 512, count: 512), imageBytes(9 * 512, 512))
        XCTAssertEqual(try readFile(s.image, offset: 16 * 512, count: 512), imageBytes(16 * 512, 512))
        XCTAssertEqual(try c.read(sector: 10, count: 6 * 512).1, [UInt8](repeating: 0, count: 6 * 512))
    }

    func testWriteZeroesWithUnmap() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        XCTAssertEqual(try c.ranges(.writeZeroes, [(4096, 2048, 1)]), Status.ok)
        XCTAssertEqual(try readFile(s.image, offset: 4096 * 512, count: 1 << 20), [UInt8](repeating: 0, count: 1 << 20))
        XCTAssertEqual(try readFile(s.image, offset: 4095 * 512, count: 512), imageBytes(4095 * 512, 512))
        XCTAssertEqual(fileStat(s.image)?.st_size, 8 << 20)
    }

    func testSeveralRangesInOneRequest() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        XCTAssertEqual(try c.ranges(.writeZeroes, [(0, 1, 0), (8, 2, 1), (100, 4, 0)]), Status.ok)
        let zero = { (n: Int) in [UInt8](repeating: 0, count: n * 512) }
        XCTAssertEqual(try readFile(s.image, offset: 0, count: 512), zero(1))
        XCTAssertEqual(try readFile(s.image, offset: 512, count: 7 * 512), imageBytes(512, 7 * 512))
        XCTAssertEqual(try readFile(s.image, offset: 8 * 512, count: 1024), zero(2))
        XCTAssertEqual(try readFile(s.image, offset: 10 * 512, count: 512), imageBytes(10 * 512, 512))
        XCTAssertEqual(try readFile(s.image, offset: 100 * 512, count: 2048), zero(4))
        XCTAssertEqual(try readFile(s.image, offset: 104 * 512, count: 512), imageBytes(104 * 512, 512))
    }

    func testDiscardAndWriteZeroesFlagRules() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        let before = try fileContents(s.image)
        // 5.2.6.2: UNMAP on a discard, or any unknown flag, is UNSUPP.
        XCTAssertEqual(try c.ranges(.discard, [(0, 8, 1)]), Status.unsupp)
        XCTAssertEqual(try c.ranges(.writeZeroes, [(0, 8, 2)]), Status.unsupp)
        XCTAssertEqual(try c.ranges(.discard, [(0, 8, 0x8000_0000)]), Status.unsupp)
        XCTAssertEqual(try fileContents(s.image), before)
    }

    func testRangeLimitsAreEnforcedBeforeAnythingChanges() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        let before = try fileContents(s.image)
        let maxSeg = Int(BlkOptions.maxDiscardSegments)
        // One segment too many: nothing is zeroed, not even the valid ranges.
        let tooMany = (0..<(maxSeg + 1)).map { (UInt64($0 * 8), UInt32(8), UInt32(0)) }
        XCTAssertEqual(try c.ranges(.writeZeroes, tooMany), Status.ioerr)
        // A valid range followed by one past the end.
        XCTAssertEqual(try c.ranges(.writeZeroes, [(0, 8, 0), (capacity - 4, 8, 0)]), Status.ioerr)
        XCTAssertEqual(try c.ranges(.discard, [(0, 8, 0), (capacity, 1, 0)]), Status.ioerr)
        // More sectors than max_discard_sectors (the image is smaller, so use an in-range start).
        XCTAssertEqual(try c.ranges(.discard, [(0, BlkOptions.maxDiscardSectors + 1, 0)]), Status.ioerr)
        // A payload that is not whole segments.
        let r = try c.run(type: .discard, sector: 0, data: [UInt8](repeating: 0, count: 20))
        XCTAssertEqual(r.status, Status.ioerr)
        XCTAssertEqual(try fileContents(s.image), before)
        // The maximum number of segments is fine.
        let maxRanges = (0..<maxSeg).map { (UInt64($0 * 16), UInt32(8), UInt32(0)) }
        XCTAssertEqual(try c.ranges(.writeZeroes, maxRanges), Status.ok)
        XCTAssertEqual(try readFile(s.image, offset: 15 * 16 * 512, count: 4096), [UInt8](repeating: 0, count: 4096))
        XCTAssertEqual(try readFile(s.image, offset: 15 * 16 * 512 + 4096, count: 512),
                       imageBytes(15 * 16 * 512 + 4096, 512))
    }

    func testUnknownRequestTypeIsUnsupp() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        let r = try rawRequest(Ring(c), type: 99, sector: 0, inLengths: [512])
        XCTAssertEqual(r.status, Status.unsupp)
        XCTAssertEqual(r.used, 1)
        // GET_LIFETIME (10) and SECURE_ERASE (14) are not offered either.
        XCTAssertEqual(try rawRequest(Ring(c), type: 10, sector: 0, inLengths: [16]).status, Status.unsupp)
        XCTAssertEqual(try rawRequest(Ring(c), type: 14, sector: 0, out: [[UInt8](repeating: 0, count: 16)]).status,
                       Status.unsupp)
        XCTAssertEqual(s.counter(.unsupported), 3)
        XCTAssertEqual(try c.read(sector: 0, count: 512).0, Status.ok)
    }

    func testRequestPastTheEndIsIOErrorAndChangesNothing() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        let before = try fileContents(s.image)
        // Straddles the end: the first half would fit.
        XCTAssertEqual(try c.write(sector: capacity - 1, data: payload(1024, seed: 4)), Status.ioerr)
        XCTAssertEqual(try c.write(sector: capacity, data: payload(512, seed: 4)), Status.ioerr)
        // A sector whose byte offset overflows 64 bits.
        XCTAssertEqual(try c.write(sector: UInt64.max / 256, data: payload(512, seed: 4)), Status.ioerr)
        XCTAssertEqual(try c.write(sector: UInt64.max, data: payload(512, seed: 4)), Status.ioerr)
        let r = try c.run(type: .read, sector: capacity, readLength: 512)
        XCTAssertEqual(r.status, Status.ioerr)
        XCTAssertEqual(r.used, 1)
        XCTAssertEqual(try c.read(sector: capacity - 1, count: 1024).0, Status.ioerr)
        XCTAssertEqual(try fileContents(s.image), before)
        XCTAssertEqual(s.counter(.errors), 6)
        // The last sector itself is fine.
        XCTAssertEqual(try c.write(sector: capacity - 1, data: payload(512, seed: 5)), Status.ok)
        XCTAssertEqual(try readFile(s.image, offset: Int(capacity - 1) * 512, count: 512), payload(512, seed: 5))
    }

    func testLengthNotAMultipleOf512IsIOError() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        let before = try fileContents(s.image)
        let r = try c.run(type: .read, sector: 0, readLength: 1000)
        XCTAssertEqual(r.status, Status.ioerr)
        XCTAssertEqual(r.used, 1)
        XCTAssertEqual(try c.read(sector: 0, count: 100).0, Status.ioerr)
        XCTAssertEqual(try c.write(sector: 0, data: payload(700, seed: 6)), Status.ioerr)
        XCTAssertEqual(try fileContents(s.image), before)
    }

    func testHeaderShorterThanSixteenBytesIsIOError() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        let sub = submitRaw(Ring(c), header: Array(requestHeader(type: BlkType.in, sector: 0).prefix(8)),
                            inLengths: [512])
        let u = try XCTUnwrap(c.queues[0].waitUsed())
        XCTAssertEqual(u.head, sub.head)
        XCTAssertEqual(c.ram.read(sub.status!, 1), [Status.ioerr])
        XCTAssertEqual(u.length, 1)
    }

    func testChainWithoutStatusByteIsReturnedEmptyAndCounted() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        let before = try fileContents(s.image)
        let sub = submitRaw(Ring(c), header: requestHeader(type: BlkType.out, sector: 0), out: [payload(512, seed: 7)],
                            withStatus: false)
        let u = try XCTUnwrap(c.queues[0].waitUsed())
        XCTAssertEqual(u.head, sub.head)
        XCTAssertEqual(u.length, 0)
        XCTAssertEqual(s.counter(.errors), 1)
        XCTAssertEqual(try fileContents(s.image), before)
        // The queue keeps serving.
        XCTAssertEqual(try c.read(sector: 0, count: 512).1, imageBytes(0, 512))
    }

    func testIndirectDescriptors() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        let data = payload(8192, seed: 8)
        let w = try c.run(type: .write, sector: 64, data: data, indirect: true)
        XCTAssertEqual(w.status, Status.ok)
        XCTAssertEqual(try readFile(s.image, offset: 64 * 512, count: 8192), data)
        let r = try c.run(type: .read, sector: 64, readLength: 8192, indirect: true)
        XCTAssertEqual(r.status, Status.ok)
        XCTAssertEqual(r.used, 8193)
        XCTAssertEqual(r.data, data)
        // Several data segments inside one indirect table.
        let rr = try rawRequest(Ring(c), type: BlkType.in, sector: 0, inLengths: [512, 1024, 512], indirect: true)
        XCTAssertEqual(rr.status, Status.ok)
        XCTAssertEqual(rr.data, imageBytes(0, 2048))
    }

    func testScatterGatherSegments() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        let parts = [payload(512, seed: 10), payload(1536, seed: 11), payload(2048, seed: 12)]
        let w = try rawRequest(Ring(c), type: BlkType.out, sector: 200, out: parts)
        XCTAssertEqual(w.status, Status.ok)
        XCTAssertEqual(try readFile(s.image, offset: 200 * 512, count: 4096), parts.flatMap { $0 })
        let r = try rawRequest(Ring(c), type: BlkType.in, sector: 200, inLengths: [2048, 512, 1536])
        XCTAssertEqual(r.status, Status.ok)
        XCTAssertEqual(r.used, 4097)
        XCTAssertEqual(r.data, parts.flatMap { $0 })
    }

    func testSegMaxDataSegmentsInOneRequest() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket, queueSize: 256)
        let n = Int(BlkConfig(try c.frontend.getConfig(offset: 0, size: 60)).segMax)
        let parts = (0..<n).map { payload(512, seed: UInt8(truncatingIfNeeded: $0)) }
        let w = try rawRequest(Ring(c), type: BlkType.out, sector: 1000, out: parts)
        XCTAssertEqual(w.status, Status.ok)
        XCTAssertEqual(try readFile(s.image, offset: 1000 * 512, count: n * 512), parts.flatMap { $0 })
        let r = try rawRequest(Ring(c), type: BlkType.in, sector: 1000, inLengths: [UInt32](repeating: 512, count: n))
        XCTAssertEqual(r.status, Status.ok)
        XCTAssertEqual(r.data, parts.flatMap { $0 })
    }

    func testManyRequestsInFlightAtOnce() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket, queueSize: 128)
        var subs: [(UInt16, [(UInt64, UInt32)], UInt64?, Int)] = []
        for i in 0..<40 {
            let sub = submitRaw(Ring(c), header: requestHeader(type: BlkType.in, sector: UInt64(i * 8)),
                                inLengths: [4096], notify: i == 39)
            subs.append((sub.head, sub.ins, sub.status, i))
        }
        var seen = Set<UInt16>()
        for _ in 0..<40 {
            let u = try XCTUnwrap(c.queues[0].waitUsed())
            seen.insert(u.head)
            XCTAssertEqual(u.length, 4097)
        }
        XCTAssertEqual(seen, Set(subs.map(\.0)))
        for (_, ins, st, i) in subs {
            XCTAssertEqual(c.ram.read(st!, 1), [Status.ok])
            XCTAssertEqual(c.ram.read(ins[0].0, 4096), imageBytes(i * 4096, 4096))
        }
        XCTAssertEqual(s.counter(.requests), 40)
        XCTAssertEqual(s.counter(.readBytes), 40 * 4096)
    }

    func testTwoQueuesBothCarryIO() throws {
        let s = try serve(options: "num-queues=2")
        let c = try BlkTestClient(socket: s.socket, queueCount: 2)
        let a = payload(4096, seed: 20), b = payload(4096, seed: 21)
        XCTAssertEqual(try c.write(sector: 0, data: a, queue: 0), Status.ok)
        XCTAssertEqual(try c.write(sector: 8, data: b, queue: 1), Status.ok)
        XCTAssertEqual(try c.read(sector: 8, count: 4096, queue: 0).1, b)
        XCTAssertEqual(try c.read(sector: 0, count: 4096, queue: 1).1, a)
        XCTAssertEqual(try c.read(sector: 16, count: 512, queue: 1).1, imageBytes(16 * 512, 512))
        XCTAssertEqual(s.requests(0), 2)
        XCTAssertEqual(s.requests(1), 3)
        XCTAssertEqual(s.counter(.writtenBytes, 0), 4096)
        XCTAssertEqual(s.counter(.writtenBytes, 1), 4096)
        XCTAssertEqual(s.counter(.readBytes, 1), 4096 + 512)
        let queues = try XCTUnwrap(s.export.stats["queues"] as? [[String: UInt64]])
        XCTAssertEqual(queues.count, 2)
        XCTAssertEqual(queues[0]["requests"], 2)
        XCTAssertEqual(queues[1]["requests"], 3)
        XCTAssertEqual(try readFile(s.image, offset: 0, count: 8192), a + b)
    }

    func testReadonlyExportRefusesEveryWrite() throws {
        let s = try serve(options: "readonly=on")
        let c = try BlkTestClient(socket: s.socket)
        let before = try fileContents(s.image)
        XCTAssertEqual(c.ackedFeatures & (1 << 5), 1 << 5)
        XCTAssertEqual(try c.write(sector: 0, data: payload(4096, seed: 30)), Status.ioerr)
        XCTAssertEqual(try c.ranges(.discard, [(0, 2048, 0)]), Status.ioerr)
        XCTAssertEqual(try c.ranges(.writeZeroes, [(0, 8, 0)]), Status.ioerr)
        XCTAssertEqual(try c.ranges(.writeZeroes, [(0, 8, 1)]), Status.ioerr)
        XCTAssertEqual(s.counter(.errors), 4)
        XCTAssertEqual(s.counter(.writtenBytes), 0)
        // Reads, GET_ID and FLUSH still work.
        XCTAssertEqual(try c.read(sector: 0, count: 4096).1, imageBytes(0, 4096))
        XCTAssertEqual(try c.run(type: .getID, sector: 0, readLength: 20).status, Status.ok)
        XCTAssertEqual(try c.run(type: .flush, sector: 0).status, Status.ok)
        XCTAssertEqual(try fileContents(s.image), before)
    }

    func testDirectIO() throws {
        let s = try serve(options: "direct=on")
        let c = try BlkTestClient(socket: s.socket)
        let data = payload(8192, seed: 40)
        XCTAssertEqual(try c.write(sector: 32, data: data), Status.ok)
        XCTAssertEqual(try readFile(s.image, offset: 32 * 512, count: 8192), data)
        XCTAssertEqual(try c.read(sector: 32, count: 8192).1, data)
        XCTAssertEqual(try c.read(sector: 48, count: 4096).1, imageBytes(48 * 512, 4096))
    }

    func testZeroLengthWriteIsOK() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        let before = try fileContents(s.image)
        let r = try rawRequest(Ring(c), type: BlkType.out, sector: 0)
        XCTAssertEqual(r.status, Status.ok)
        XCTAssertEqual(try fileContents(s.image), before)
    }

    // MARK: interrupts (virtio 1.3, 2.7.7 and 2.7.10)

    func testNoInterruptFlagSuppressesCalls() throws {
        let s = try serve()
        let eventIdx: UInt64 = 1 << 29
        let c = try BlkTestClient(socket: s.socket, features: BlkDevice.features & ~eventIdx)
        XCTAssertFalse(c.queues[0].eventIdx)
        c.queues[0].setNoInterrupt(true)
        XCTAssertEqual(try c.read(sector: 0, count: 512).0, Status.ok)
        XCTAssertEqual(try c.read(sector: 1, count: 512).0, Status.ok)
        c.queues[0].setNoInterrupt(false)
        XCTAssertEqual(try c.read(sector: 2, count: 512).0, Status.ok)
        // Stopping the ring goes through the poller after its last flush: every call has been made by then.
        XCTAssertEqual(try c.frontend.getVringBase(0), 3)
        XCTAssertEqual(drainEventFD(c.calls[0]), 1)
        XCTAssertEqual(s.counter(.notifications), 1)
    }

    func testUsedEventSuppressesCallsWithEventIdx() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        XCTAssertTrue(c.queues[0].eventIdx)
        let q = c.queues[0]
        q.setUsedEvent(0)
        XCTAssertEqual(try c.read(sector: 0, count: 512).0, Status.ok)   // used idx 0 -> 1: crosses used_event 0
        q.setUsedEvent(10)
        XCTAssertEqual(try c.read(sector: 1, count: 512).0, Status.ok)   // 1 -> 2: no
        XCTAssertEqual(try c.read(sector: 2, count: 512).0, Status.ok)   // 2 -> 3: no
        q.setUsedEvent(3)
        XCTAssertEqual(try c.read(sector: 3, count: 512).0, Status.ok)   // 3 -> 4: crosses 3
        XCTAssertEqual(try c.frontend.getVringBase(0), 4)
        XCTAssertEqual(drainEventFD(c.calls[0]), 2)
        XCTAssertEqual(s.counter(.notifications), 2)
    }
}
