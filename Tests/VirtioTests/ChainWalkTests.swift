import XCTest
import Virtio
import VhostUserTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Well-formed chains (virtio 1.3, 2.7.5): what the device gets is what the driver put there.
final class ChainWalkTests: XCTestCase {
    func testReadableThenWritableChainYieldsDriverBytes() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue()
        let header = pattern(16, seed: 1), payload = pattern(512, seed: 2)
        let hdrGPA = f.buffer(header), payGPA = f.buffer(payload)
        let inGPA = f.zeroed(64), statusGPA = f.zeroed(1)
        let head = f.driver.add([
            .init(gpa: hdrGPA, length: 16, writable: false),
            .init(gpa: payGPA, length: 512, writable: false),
            .init(gpa: inGPA, length: 64, writable: true),
            .init(gpa: statusGPA, length: 1, writable: true),
        ])
        var seg = ChainSegments(capacity: 8)
        defer { seg.deallocate() }
        XCTAssertEqual(try walkNext(vq, &seg), head)

        XCTAssertEqual(seg.segments, [
            Segment(bytes: header, writable: false), Segment(bytes: payload, writable: false),
            Segment(bytes: [UInt8](repeating: 0, count: 64), writable: true),
            Segment(bytes: [0], writable: true),
        ])
        XCTAssertEqual(seg.readableCount, 2)
        XCTAssertEqual(seg.writableCount, 2)
        XCTAssertEqual(seg.readableBytes, 528)
        XCTAssertEqual(seg.writableBytes, 65)
        // Segments point into the daemon's mapping, at the driver's addresses.
        XCTAssertEqual(seg.base(0), f.daemonHost(hdrGPA))
        XCTAssertEqual(seg.base(3), f.daemonHost(statusGPA))
        // And writing there is what the driver reads back.
        seg.base(2)!.storeBytes(of: 0xC3, toByteOffset: 63, as: UInt8.self)
        XCTAssertEqual(f.ram.read(inGPA + 63, 1), [0xC3])
    }

    func testPopHeadReturnsHeadsInAvailOrderThenNil() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue()
        let heads = (0..<3).map { i in
            f.driver.add([.init(gpa: f.buffer([UInt8(i)]), length: 1, writable: false),
                          .init(gpa: f.zeroed(1), length: 1, writable: true)])
        }
        XCTAssertEqual(try vq.pendingCount(), 3)
        XCTAssertEqual(try vq.popHead(), heads[0])
        XCTAssertEqual(try vq.popHead(), heads[1])
        vq.unpop()
        XCTAssertEqual(try vq.popHead(), heads[1], "unpop hands the same head out again")
        XCTAssertEqual(try vq.popHead(), heads[2])
        XCTAssertNil(try vq.popHead())
        XCTAssertEqual(vq.lastAvailIdx, 3)
        XCTAssertEqual(try vq.pendingCount(), 0)
    }

    func testIndirectTableIsWalkedWhenNegotiated() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue(features: VirtioFeature.ringIndirectDesc)
        XCTAssertTrue(vq.indirect)
        let a = pattern(10, seed: 3), b = pattern(20, seed: 4)
        let head = f.driver.add([
            .init(gpa: f.buffer(a), length: 10, writable: false),
            .init(gpa: f.buffer(b), length: 20, writable: false),
            .init(gpa: f.zeroed(30), length: 30, writable: true),
        ], indirect: true)
        XCTAssertEqual(f.driver.freeDescriptors, 7, "the driver used one ring descriptor")
        var seg = ChainSegments(capacity: 8)
        defer { seg.deallocate() }
        XCTAssertEqual(try walkNext(vq, &seg), head)
        XCTAssertEqual(seg.segments, [
            Segment(bytes: a, writable: false), Segment(bytes: b, writable: false),
            Segment(bytes: [UInt8](repeating: 0, count: 30), writable: true),
        ])
        XCTAssertEqual(seg.readableBytes, 30)
        XCTAssertEqual(seg.writableBytes, 30)
    }

    func testAcceptsIndirectTableOfExactlyQueueSizeEntries() throws {
        let f = try RingFixture(queueSize: 4)
        let vq = try f.queue(features: VirtioFeature.ringIndirectDesc)
        let buffers = (0..<4).map { i in DriverVirtqueue.Buffer(gpa: f.buffer([UInt8(i)]), length: 1, writable: false) }
        f.driver.add(buffers, indirect: true)
        var seg = ChainSegments(capacity: 8)
        defer { seg.deallocate() }
        try walkNext(vq, &seg)
        XCTAssertEqual(seg.segments.map(\.bytes), [[0], [1], [2], [3]])
    }

    /// 2.7.5.3.2: the device MUST handle zero or more normal chained descriptors followed by a single
    /// indirect one.
    func testDirectDescriptorsMayEndInIndirectTable() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue(features: VirtioFeature.ringIndirectDesc)
        let r0 = pattern(6, seed: 5), r1 = pattern(7, seed: 6)
        let table = f.ram.allocate(32, alignment: 16)
        f.writeTableEntry(table, 0, addr: f.buffer(r1), len: 7, flags: descNext, next: 1)
        f.writeTableEntry(table, 1, addr: f.zeroed(3), len: 3, flags: descWrite, next: 0)
        f.driver.writeDescriptor(2, addr: f.buffer(r0), len: 6, flags: descNext, next: 5)
        f.driver.writeDescriptor(5, addr: table, len: 32, flags: descIndirect, next: 0)
        f.driver.publish(2)
        var seg = ChainSegments(capacity: 8)
        defer { seg.deallocate() }
        XCTAssertEqual(try walkNext(vq, &seg), 2)
        XCTAssertEqual(seg.segments, [
            Segment(bytes: r0, writable: false), Segment(bytes: r1, writable: false),
            Segment(bytes: [0, 0, 0], writable: true),
        ])
    }

    /// 2.7.5.3.2: the device MUST ignore the write-only flag on a descriptor that refers to an indirect table.
    func testIgnoresWriteFlagOnIndirectDescriptor() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue(features: VirtioFeature.ringIndirectDesc)
        let r = pattern(5, seed: 7)
        let table = f.ram.allocate(32, alignment: 16)
        f.writeTableEntry(table, 0, addr: f.buffer(r), len: 5, flags: descNext, next: 1)
        f.writeTableEntry(table, 1, addr: f.zeroed(2), len: 2, flags: descWrite, next: 0)
        f.driver.writeDescriptor(0, addr: table, len: 32, flags: descIndirect | descWrite, next: 0)
        f.driver.publish(0)
        var seg = ChainSegments(capacity: 8)
        defer { seg.deallocate() }
        try walkNext(vq, &seg)
        XCTAssertEqual(seg.segments, [Segment(bytes: r, writable: false), Segment(bytes: [0, 0], writable: true)])
    }

    func testAcceptsChainUsingEveryDescriptorOfQueue() throws {
        let f = try RingFixture(queueSize: 4)
        let vq = try f.queue()
        let buffers = (0..<4).map { i in DriverVirtqueue.Buffer(gpa: f.buffer([UInt8(10 + i)]), length: 1, writable: i == 3) }
        f.driver.add(buffers)
        var seg = ChainSegments(capacity: 8)
        defer { seg.deallocate() }
        try walkNext(vq, &seg)
        XCTAssertEqual(seg.segments.map(\.bytes), [[10], [11], [12], [13]])
        XCTAssertEqual(seg.readableCount, 3)
    }

    func testZeroLengthDescriptorAddsNoSegment() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue()
        let d = pattern(4, seed: 8)
        f.driver.add([.init(gpa: f.buffer(d), length: 4, writable: false),
                      .init(gpa: f.zeroed(8), length: 0, writable: true),
                      .init(gpa: f.zeroed(2), length: 2, writable: true)])
        var seg = ChainSegments(capacity: 8)
        defer { seg.deallocate() }
        try walkNext(vq, &seg)
        XCTAssertEqual(seg.segments, [Segment(bytes: d, writable: false), Segment(bytes: [0, 0], writable: true)])
        XCTAssertEqual(seg.writableBytes, 2)
    }

    func testReusedSegmentsHoldOnlyTheLatestChain() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue()
        f.driver.add([.init(gpa: f.buffer(pattern(3, seed: 1)), length: 3, writable: false),
                      .init(gpa: f.zeroed(4), length: 4, writable: true),
                      .init(gpa: f.zeroed(5), length: 5, writable: true)])
        let second = pattern(9, seed: 2)
        f.driver.add([.init(gpa: f.buffer(second), length: 9, writable: false)])
        var seg = ChainSegments(capacity: 8)
        defer { seg.deallocate() }
        try walkNext(vq, &seg)
        XCTAssertEqual(seg.count, 3)
        try walkNext(vq, &seg)
        XCTAssertEqual(seg.segments, [Segment(bytes: second, writable: false)])
        XCTAssertEqual(seg.readableBytes, 9)
        XCTAssertEqual(seg.writableBytes, 0)
        XCTAssertNil(seg.lastWritableByte)
    }

    func testBufferStraddlingTwoRegionsYieldsTwoSegments() throws {
        // Two memfds at adjacent guest addresses; one buffer covers the end of one and the start of the other.
        let next = try GuestRAM(size: 0x1_0000, guestAddress: 0x4010_0000, name: "ram-b")
        let f = try RingFixture(queueSize: 8, ramSize: 1 << 20, guestAddress: 0x4000_0000, extra: [next])
        XCTAssertEqual(f.ramEnd, next.guestAddress)
        let vq = try f.queue()
        let readable = pattern(300, seed: 9)
        f.ram.write(f.ramEnd - 100, Array(readable[..<100]))
        next.write(next.guestAddress, Array(readable[100...]))
        next.fill(next.guestAddress + 0x1000, 64, byte: 0)
        let head = f.driver.add([
            .init(gpa: f.ramEnd - 100, length: 300, writable: false),
            .init(gpa: f.ramEnd - 16, length: 16, writable: true),           // ends exactly at the boundary
            .init(gpa: next.guestAddress + 0x1000 - 24, length: 64, writable: true),
        ])
        var seg = ChainSegments(capacity: 8)
        defer { seg.deallocate() }
        XCTAssertEqual(try walkNext(vq, &seg), head)
        XCTAssertEqual(seg.lengths, [100, 200, 16, 64])
        XCTAssertEqual(seg.segments[0].bytes + seg.segments[1].bytes, readable)
        XCTAssertEqual(seg.base(0), f.regions[0].host + Int(f.ram.size - 100))
        XCTAssertEqual(seg.base(1), f.regions[1].host)
        XCTAssertEqual(seg.readableCount, 2)
        XCTAssertEqual(seg.readableBytes, 300)
        XCTAssertEqual(seg.writableBytes, 80)
    }

    func testWritableBufferStraddlingTwoRegionsIsWrittenOnBothSides() throws {
        let next = try GuestRAM(size: 0x1_0000, guestAddress: 0x4010_0000, name: "ram-b")
        let f = try RingFixture(queueSize: 8, extra: [next])
        let vq = try f.queue()
        f.ram.fill(f.ramEnd - 10, 10, byte: 0)
        f.driver.add([.init(gpa: f.ramEnd - 10, length: 30, writable: true)])
        var seg = ChainSegments(capacity: 4)
        defer { seg.deallocate() }
        try walkNext(vq, &seg)
        XCTAssertEqual(seg.lengths, [10, 20])
        let data = pattern(30, seed: 10)
        XCTAssertEqual(data.withUnsafeBytes { seg.copyToWritable(offset: 0, from: $0.baseAddress!, length: 30) }, 30)
        XCTAssertEqual(f.ram.read(f.ramEnd - 10, 10), Array(data[..<10]))
        XCTAssertEqual(next.read(next.guestAddress, 20), Array(data[10...]))
    }
}
