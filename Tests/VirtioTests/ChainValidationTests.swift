import XCTest
import Virtio
import VhostUserTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Malformed rings and chains a guest can write; each must be refused with the rule it broke.
final class ChainValidationTests: XCTestCase {
    let indirectFeature = VirtioFeature.ringIndirectDesc

    // MARK: buffers outside guest memory

    func testRejectsBufferRunningPastEndOfGuestMemory() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue()
        f.driver.add([.init(gpa: f.ramEnd - 8, length: 16, writable: true)])
        assertChainRejected(vq, .descriptorOutsideMemory(f.ramEnd - 8, 16))
        f.driver.add([.init(gpa: f.ramEnd - 8, length: 8, writable: true)])   // the last 8 bytes are fine
        var seg = ChainSegments(capacity: 4)
        defer { seg.deallocate() }
        try walkNext(vq, &seg)
        XCTAssertEqual(seg.lengths, [8])
    }

    func testRejectsBufferNotInAnyRegion() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue()
        f.driver.add([.init(gpa: 0x1000, length: 16, writable: false)])
        assertChainRejected(vq, .descriptorOutsideMemory(0x1000, 16))
    }

    func testRejectsBufferRunningIntoGapBetweenRegions() throws {
        let far = try GuestRAM(size: 0x1_0000, guestAddress: 0x4020_0000, name: "far")
        let f = try RingFixture(queueSize: 8, extra: [far])   // RAM ends at 0x4010_0000: a 1 MiB hole follows
        let vq = try f.queue()
        f.driver.add([.init(gpa: f.ramEnd - 4, length: 8, writable: false)])
        assertChainRejected(vq, .descriptorOutsideMemory(f.ramEnd - 4, 8))
    }

    func testRejectsBufferWhoseEndWrapsPastTopOfAddressSpace() throws {
        // The highest region there can be; its last byte is UInt64.max - 1.
        let top = try GuestRAM(size: 0x1_0000, guestAddress: UInt64.max - 0x1_0000, name: "top")
        let f = try RingFixture(queueSize: 8, extra: [top])
        let vq = try f.queue()
        f.driver.add([.init(gpa: UInt64.max - 7, length: 16, writable: false)])
        assertChainRejected(vq, .descriptorOutsideMemory(UInt64.max - 7, 16))
        f.driver.add([.init(gpa: UInt64.max, length: 1, writable: false)])
        assertChainRejected(vq, .descriptorOutsideMemory(UInt64.max, 1))
        // A buffer ending on the region's last byte is fine.
        top.write(UInt64.max - 16, pattern(16, seed: 1))
        f.driver.add([.init(gpa: UInt64.max - 16, length: 16, writable: false)])
        var seg = ChainSegments(capacity: 4)
        defer { seg.deallocate() }
        try walkNext(vq, &seg)
        XCTAssertEqual(seg.segments, [Segment(bytes: pattern(16, seed: 1), writable: false)])
    }

    // MARK: chain shape

    func testRejectsDescriptorThatLinksToItself() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue()
        f.driver.writeDescriptor(3, addr: f.zeroed(8), len: 8, flags: descNext, next: 3)
        f.driver.publish(3)
        assertChainRejected(vq, capacity: 64, .chainTooLong)
    }

    func testRejectsLoopBetweenDescriptors() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue()
        let buf = f.zeroed(8)
        f.driver.writeDescriptor(0, addr: buf, len: 8, flags: descNext, next: 1)
        f.driver.writeDescriptor(1, addr: buf, len: 8, flags: descNext, next: 2)
        f.driver.writeDescriptor(2, addr: buf, len: 8, flags: descNext, next: 0)
        f.driver.publish(0)
        assertChainRejected(vq, capacity: 64, .chainTooLong)
    }

    func testRejectsChainLongerThanQueueSize() throws {
        // 0 -> 1 -> 2 -> 3 -> 1: the fifth descriptor is one more than a 4-entry queue can hold.
        let f = try RingFixture(queueSize: 4)
        let vq = try f.queue()
        let buf = f.zeroed(8)
        for i: UInt16 in 0..<4 {
            f.driver.writeDescriptor(i, addr: buf, len: 8, flags: descNext, next: i == 3 ? 1 : i + 1)
        }
        f.driver.publish(0)
        assertChainRejected(vq, capacity: 64, .chainTooLong)
    }

    func testRejectsNextIndexOutOfRange() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue()
        f.driver.writeDescriptor(0, addr: f.zeroed(8), len: 8, flags: descNext, next: 8)
        f.driver.publish(0)
        assertChainRejected(vq, .descriptorIndexOutOfRange(8))
        f.driver.writeDescriptor(1, addr: f.zeroed(8), len: 8, flags: descNext, next: 0xFFFF)
        f.driver.publish(1)
        assertChainRejected(vq, .descriptorIndexOutOfRange(0xFFFF))
    }

    func testRejectsHeadIndexOutOfRangeOnAvailRing() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue()
        f.driver.publish(8)
        XCTAssertThrowsError(try vq.popHead()) {
            XCTAssertEqual($0 as? VirtqueueError, .headIndexOutOfRange(8))
        }
        XCTAssertEqual(vq.lastAvailIdx, 0, "a bad head is not consumed")
    }

    func testRejectsAvailIndexMoreThanQueueSizeAhead() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue()
        f.driver.setAvailIndex(9)
        XCTAssertThrowsError(try vq.pendingCount()) { XCTAssertEqual($0 as? VirtqueueError, .availIndexTooFar(9)) }
        XCTAssertThrowsError(try vq.popHead()) { XCTAssertEqual($0 as? VirtqueueError, .availIndexTooFar(9)) }
        f.driver.setAvailIndex(8)
        XCTAssertEqual(try vq.pendingCount(), 8, "exactly a queue's worth is allowed")
        // An index that moved backwards looks like one that ran 65535 ahead.
        f.driver.setAvailIndex(0xFFFF)
        XCTAssertThrowsError(try vq.pendingCount()) { XCTAssertEqual($0 as? VirtqueueError, .availIndexTooFar(0xFFFF)) }
    }

    func testAvailIndexDistanceIsMeasuredAcrossWrap() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue(lastAvailIdx: 65530)
        f.driver.setAvailIndex(65530 &+ 8)    // 2
        XCTAssertEqual(try vq.pendingCount(), 8)
        f.driver.setAvailIndex(65530 &+ 9)    // 3
        XCTAssertThrowsError(try vq.pendingCount()) { XCTAssertEqual($0 as? VirtqueueError, .availIndexTooFar(9)) }
    }

    func testRejectsReadableDescriptorAfterWritableOne() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue()
        f.driver.add([.init(gpa: f.zeroed(4), length: 4, writable: false),
                      .init(gpa: f.zeroed(4), length: 4, writable: true),
                      .init(gpa: f.zeroed(4), length: 4, writable: false)])
        assertChainRejected(vq, .readableAfterWritable)
    }

    func testRejectsReadableInIndirectTableAfterWritableDirectDescriptor() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue(features: indirectFeature)
        let table = f.ram.allocate(16, alignment: 16)
        f.writeTableEntry(table, 0, addr: f.zeroed(4), len: 4, flags: 0, next: 0)
        f.driver.writeDescriptor(0, addr: f.zeroed(4), len: 4, flags: descWrite | descNext, next: 1)
        f.driver.writeDescriptor(1, addr: table, len: 16, flags: descIndirect, next: 0)
        f.driver.publish(0)
        assertChainRejected(vq, .readableAfterWritable)
    }

    func testRejectsChainWhoseTotalLengthExceeds4GiB() throws {
        // A sparse 3 GiB memfd (never touched) so buffers can be large and still inside guest memory.
        let gib: UInt64 = 1 << 30
        let big = try GuestRAM(size: 3 * gib, guestAddress: 1 << 36, name: "big")
        let f = try RingFixture(queueSize: 8, extra: [big])
        let vq = try f.queue()
        // 3 GiB + (1 GiB - 1) = 2^32 - 1: the largest total allowed.
        f.driver.add([.init(gpa: big.guestAddress, length: UInt32(3 * gib), writable: false),
                      .init(gpa: big.guestAddress, length: UInt32(gib - 1), writable: true)])
        var seg = ChainSegments(capacity: 4)
        defer { seg.deallocate() }
        try walkNext(vq, &seg)
        XCTAssertEqual(seg.readableBytes + seg.writableBytes, UInt64(UInt32.max))
        // One byte more overflows a 32-bit total.
        f.driver.add([.init(gpa: big.guestAddress, length: UInt32(3 * gib), writable: false),
                      .init(gpa: big.guestAddress, length: UInt32(gib), writable: true)])
        assertChainRejected(vq, .lengthOverflow)
    }

    func testRejectsChainNeedingMoreSegmentsThanCapacity() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue()
        let three = (0..<3).map { _ in DriverVirtqueue.Buffer(gpa: f.zeroed(4), length: 4, writable: false) }
        f.driver.add(three)
        assertChainRejected(vq, capacity: 2, .tooManySegments)
        f.driver.add(three)
        var seg = ChainSegments(capacity: 3)
        defer { seg.deallocate() }
        try walkNext(vq, &seg)
        XCTAssertEqual(seg.count, 3)
    }

    func testRejectsStraddlingBufferWhenOnlyOneSegmentFits() throws {
        let next = try GuestRAM(size: 0x1_0000, guestAddress: 0x4010_0000, name: "ram-b")
        let f = try RingFixture(queueSize: 8, extra: [next])
        let vq = try f.queue()
        f.driver.add([.init(gpa: f.ramEnd - 4, length: 8, writable: false)])
        assertChainRejected(vq, capacity: 1, .tooManySegments)
    }

    // MARK: indirect descriptors

    func testRejectsIndirectWithoutFeature() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue(features: 0)
        XCTAssertFalse(vq.indirect)
        f.driver.add([.init(gpa: f.zeroed(4), length: 4, writable: false)], indirect: true)
        assertChainRejected(vq, .indirectNotNegotiated)
    }

    func testRejectsNestedIndirect() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue(features: indirectFeature)
        let inner = f.ram.allocate(16, alignment: 16)
        f.writeTableEntry(inner, 0, addr: f.zeroed(4), len: 4, flags: 0, next: 0)
        let outer = f.ram.allocate(16, alignment: 16)
        f.writeTableEntry(outer, 0, addr: inner, len: 16, flags: descIndirect, next: 0)
        f.driver.writeDescriptor(0, addr: outer, len: 16, flags: descIndirect, next: 0)
        f.driver.publish(0)
        assertChainRejected(vq, .nestedIndirect)
    }

    func testRejectsIndirectWithNext() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue(features: indirectFeature)
        let table = f.ram.allocate(16, alignment: 16)
        f.writeTableEntry(table, 0, addr: f.zeroed(4), len: 4, flags: 0, next: 0)
        f.driver.writeDescriptor(0, addr: table, len: 16, flags: descIndirect | descNext, next: 1)
        f.driver.writeDescriptor(1, addr: f.zeroed(4), len: 4, flags: descWrite, next: 0)
        f.driver.publish(0)
        assertChainRejected(vq, .indirectWithNext)
    }

    func testRejectsIndirectTableOfLengthZero() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue(features: indirectFeature)
        f.driver.writeDescriptor(0, addr: f.ram.allocate(16, alignment: 16), len: 0, flags: descIndirect, next: 0)
        f.driver.publish(0)
        assertChainRejected(vq, .indirectTableInvalid(0))
    }

    func testRejectsIndirectTableLengthNotMultipleOf16() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue(features: indirectFeature)
        let table = f.ram.allocate(64, alignment: 16)
        f.writeTableEntry(table, 0, addr: f.zeroed(4), len: 4, flags: 0, next: 0)
        for (i, len) in [UInt32(24), 17, 15].enumerated() {
            f.driver.writeDescriptor(UInt16(i), addr: table, len: len, flags: descIndirect, next: 0)
            f.driver.publish(UInt16(i))
            assertChainRejected(vq, .indirectTableInvalid(len))
        }
    }

    func testRejectsIndirectTableLongerThanQueueSize() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue(features: indirectFeature)
        let table = f.ram.allocate(16 * 9, alignment: 16)
        let buf = f.zeroed(4)
        for i in 0..<9 { f.writeTableEntry(table, i, addr: buf, len: 4, flags: i < 8 ? descNext : 0, next: UInt16(i + 1)) }
        f.driver.writeDescriptor(0, addr: table, len: 16 * 9, flags: descIndirect, next: 0)
        f.driver.publish(0)
        assertChainRejected(vq, .indirectTableInvalid(16 * 9))
    }

    func testRejectsIndirectTableOutsideGuestMemory() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue(features: indirectFeature)
        f.driver.writeDescriptor(0, addr: 0x1000, len: 32, flags: descIndirect, next: 0)
        f.driver.publish(0)
        assertChainRejected(vq, .descriptorOutsideMemory(0x1000, 32))
        // Starts inside RAM, ends past it.
        f.driver.writeDescriptor(1, addr: f.ramEnd - 16, len: 32, flags: descIndirect, next: 0)
        f.driver.publish(1)
        assertChainRejected(vq, .descriptorOutsideMemory(f.ramEnd - 16, 32))
    }

    func testRejectsNextIndexOutOfRangeInsideIndirectTable() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue(features: indirectFeature)
        let table = f.ram.allocate(32, alignment: 16)
        f.writeTableEntry(table, 0, addr: f.zeroed(4), len: 4, flags: descNext, next: 1)
        f.writeTableEntry(table, 1, addr: f.zeroed(4), len: 4, flags: descNext, next: 2)   // table has 2 entries
        f.driver.writeDescriptor(0, addr: table, len: 32, flags: descIndirect, next: 0)
        f.driver.publish(0)
        assertChainRejected(vq, .descriptorIndexOutOfRange(2))
    }

    func testRejectsLoopInsideIndirectTable() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue(features: indirectFeature)
        let table = f.ram.allocate(32, alignment: 16)
        f.writeTableEntry(table, 0, addr: f.zeroed(4), len: 4, flags: descNext, next: 1)
        f.writeTableEntry(table, 1, addr: f.zeroed(4), len: 4, flags: descNext, next: 0)
        f.driver.writeDescriptor(0, addr: table, len: 32, flags: descIndirect, next: 0)
        f.driver.publish(0)
        assertChainRejected(vq, capacity: 64, .chainTooLong)
    }
}
