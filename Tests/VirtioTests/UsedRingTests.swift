import XCTest
import Virtio
import VhostUserTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Returning buffers (virtio 1.3, 2.7.8): the independent driver must read back what the device wrote.
final class UsedRingTests: XCTestCase {
    func testPublishedUsedEntriesReachDriverInCompletionOrder() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue()
        let heads = (0..<3).map { _ in
            f.driver.add([.init(gpa: f.zeroed(4), length: 4, writable: false),
                          .init(gpa: f.zeroed(8), length: 8, writable: true)])
        }
        XCTAssertEqual(f.driver.freeDescriptors, 2)
        var popped: [UInt16] = []
        while let h = try vq.popHead() { popped.append(h) }
        XCTAssertEqual(popped, heads)
        // Completed out of order, as a device may.
        vq.pushUsed(head: heads[2], length: 8)
        vq.pushUsed(head: heads[0], length: 1)
        vq.pushUsed(head: heads[1], length: 0)
        vq.publishUsed()
        XCTAssertEqual(f.driver.usedIndex, 3)
        XCTAssertEqual(vq.usedIdx, 3)
        let seen = (0..<3).compactMap { _ in f.driver.popUsed() }
        XCTAssertEqual(seen.map(\.head), [heads[2], heads[0], heads[1]])
        XCTAssertEqual(seen.map(\.length), [8, 1, 0])
        XCTAssertNil(f.driver.popUsed())
        XCTAssertEqual(f.driver.freeDescriptors, 8, "the driver got every descriptor back")
    }

    func testUsedEntriesStayInvisibleUntilPublished() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue()
        let head = f.driver.add([.init(gpa: f.zeroed(4), length: 4, writable: true)])
        XCTAssertEqual(try vq.popHead(), head)
        vq.pushUsed(head: head, length: 4)
        XCTAssertEqual(vq.usedIdx, 1)
        XCTAssertEqual(f.driver.usedIndex, 0)
        XCTAssertNil(f.driver.popUsed())
        vq.publishUsed()
        let u = try XCTUnwrap(f.driver.popUsed())
        XCTAssertEqual(u.head, head)
        XCTAssertEqual(u.length, 4)
    }

    func testUsedIndexWrapsPast65535() throws {
        let f = try RingFixture(queueSize: 8)
        // A queue resumed near the top of the index space (the driver already saw 65530 used entries).
        f.setUsedIndexInRing(65530)
        f.driver.setAvailIndex(65530)
        let vq = try f.queue(lastAvailIdx: 65530)
        XCTAssertEqual(vq.usedIdx, 65530)
        let buf = f.zeroed(4)
        for i in 0..<12 {
            let head = UInt16((i * 3) % 8)
            f.driver.writeDescriptor(head, addr: buf, len: 4, flags: descWrite, next: 0)
            f.driver.publish(head)
            XCTAssertEqual(try vq.popHead(), head, "round \(i)")
            vq.pushUsed(head: head, length: UInt32(100 + i))
            vq.publishUsed()
            let idx = UInt16(truncatingIfNeeded: 65530 + i)
            XCTAssertEqual(f.driver.usedIndex, idx &+ 1, "round \(i)")
            let e = f.usedElement(slot: Int(idx % 8))
            XCTAssertEqual(e.id, UInt32(head), "round \(i)")
            XCTAssertEqual(e.len, UInt32(100 + i), "round \(i)")
        }
        XCTAssertEqual(vq.usedIdx, 6)
        XCTAssertEqual(vq.lastAvailIdx, 6)
        XCTAssertEqual(f.driver.usedIndex, 6)
    }

    func testDriverAndDeviceStayInStepAcrossFullIndexWrap() throws {
        // The driver starts at 0 and runs past 65535 with both sides counting for themselves.
        let f = try RingFixture(queueSize: 4)
        let vq = try f.queue()
        let w = f.zeroed(2)
        var seg = ChainSegments(capacity: 4)
        defer { seg.deallocate() }
        var mismatches = 0
        let rounds = 65536 + 10
        for i in 0..<rounds {
            let head = f.driver.add([.init(gpa: w, length: 2, writable: true)])
            guard let h = try vq.popHead() else { XCTFail("nothing available at round \(i)"); return }
            try vq.readChain(head: h, into: &seg)
            vq.pushUsed(head: h, length: UInt32(i & 0xFFFF))
            vq.publishUsed()
            guard let u = f.driver.popUsed(), u.head == head, u.length == UInt32(i & 0xFFFF) else {
                mismatches += 1
                break
            }
        }
        XCTAssertEqual(mismatches, 0)
        XCTAssertEqual(vq.lastAvailIdx, UInt16(truncatingIfNeeded: rounds))
        XCTAssertEqual(vq.usedIdx, UInt16(truncatingIfNeeded: rounds))
        XCTAssertEqual(f.driver.usedIndex, 10)
    }
}
