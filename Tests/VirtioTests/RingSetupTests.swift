import XCTest
import Virtio
import VhostUserTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Starting a queue: ring placement and queue size rules (virtio 1.3, 2.7).
final class RingSetupTests: XCTestCase {
    func testAcceptsRingsGivenAsGuestPhysicalAddresses() throws {
        let f = try RingFixture(queueSize: 16)
        let vq = try f.queue(lastAvailIdx: 0)
        XCTAssertEqual(vq.size, 16)
        XCTAssertEqual(vq.usedIdx, 0)
        XCTAssertEqual(try vq.pendingCount(), 0)
        XCTAssertNil(try vq.popHead())
        // The queue really reads the driver's rings: one chain becomes one pending entry.
        let head = f.driver.add([.init(gpa: f.buffer([1, 2, 3]), length: 3, writable: false)])
        XCTAssertEqual(try vq.pendingCount(), 1)
        XCTAssertEqual(try vq.popHead(), head)
    }

    func testAcceptsRingsGivenAsFrontendUserAddresses() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue(addresses: f.userAddresses)
        let data = pattern(40, seed: 1)
        let head = f.driver.add([.init(gpa: f.buffer(data), length: 40, writable: false)])
        var seg = ChainSegments(capacity: 4)
        defer { seg.deallocate() }
        XCTAssertEqual(try walkNext(vq, &seg), head)
        // Ring addresses are user addresses; buffer addresses in descriptors stay guest-physical.
        XCTAssertEqual(seg.segments, [Segment(bytes: data, writable: false)])
        vq.pushUsed(head: head, length: 0)
        vq.publishUsed()
        XCTAssertEqual(f.driver.popUsed()?.head, head)
    }

    func testRejectsMisalignedDescriptorTable() throws {
        let f = try RingFixture()
        var a = f.gpaAddresses
        a.descriptorTable += 8
        XCTAssertThrowsError(try f.queue(addresses: a)) {
            XCTAssertEqual(ringAddressProblem($0), "descriptor table misaligned")
        }
    }

    func testRejectsMisalignedAvailRing() throws {
        let f = try RingFixture()
        var a = f.gpaAddresses
        a.availRing += 1
        XCTAssertThrowsError(try f.queue(addresses: a)) {
            XCTAssertEqual(ringAddressProblem($0), "avail ring misaligned")
        }
    }

    func testRejectsMisalignedUsedRing() throws {
        let f = try RingFixture()
        var a = f.gpaAddresses
        a.usedRing += 2
        XCTAssertThrowsError(try f.queue(addresses: a)) {
            XCTAssertEqual(ringAddressProblem($0), "used ring misaligned")
        }
    }

    func testRejectsDescriptorTableRunningPastEndOfMemory() throws {
        let f = try RingFixture(queueSize: 8)
        var a = f.gpaAddresses
        a.descriptorTable = f.ramEnd - 16 * 8 + 16   // last entry would be past RAM
        XCTAssertThrowsError(try f.queue(addresses: a)) {
            XCTAssertEqual(ringAddressProblem($0), "descriptor table outside guest memory")
        }
        a.descriptorTable = f.ramEnd - 16 * 8        // exactly fits
        XCTAssertNoThrow(try f.queue(addresses: a))
    }

    func testRejectsAvailRingRunningPastEndOfMemory() throws {
        let f = try RingFixture(queueSize: 8)
        var a = f.gpaAddresses
        a.availRing = f.ramEnd - 20               // used_event would be 2 bytes past RAM
        XCTAssertThrowsError(try f.queue(addresses: a)) {
            XCTAssertEqual(ringAddressProblem($0), "avail ring outside guest memory")
        }
        a.availRing = f.ramEnd - 22               // exactly fits (6 + 2 * 8)
        XCTAssertNoThrow(try f.queue(addresses: a))
    }

    func testRejectsUsedRingRunningPastEndOfMemory() throws {
        let f = try RingFixture(queueSize: 8)
        var a = f.gpaAddresses
        a.usedRing = f.ramEnd - 68                // 4-aligned; avail_event would be 2 bytes past RAM
        XCTAssertThrowsError(try f.queue(addresses: a)) {
            XCTAssertEqual(ringAddressProblem($0), "used ring outside guest memory")
        }
        a.usedRing = f.ramEnd - 72                // fits (needs 6 + 8 * 8 = 70)
        XCTAssertNoThrow(try f.queue(addresses: a))
    }

    func testRejectsRingsNotInAnyRegion() throws {
        let f = try RingFixture(queueSize: 8)
        var a = f.gpaAddresses
        a.usedRing = 0x1000
        XCTAssertThrowsError(try f.queue(addresses: a)) { XCTAssertNotNil(ringAddressProblem($0)) }
        // Guest-physical values passed as user addresses point nowhere.
        a = f.gpaAddresses
        a.guestPhysical = false
        XCTAssertThrowsError(try f.queue(addresses: a)) {
            XCTAssertEqual(ringAddressProblem($0), "descriptor table outside guest memory")
        }
    }

    func testRejectsQueueSizeNotPowerOfTwo() throws {
        let f = try RingFixture(queueSize: 8)
        for n: UInt32 in [3, 6, 7, 100, 32767] {
            XCTAssertThrowsError(try f.queue(size: n), "size \(n)") {
                XCTAssertEqual($0 as? VirtqueueError, .queueSizeInvalid(n))
            }
        }
    }

    func testRejectsQueueSizeZero() throws {
        let f = try RingFixture(queueSize: 8)
        XCTAssertThrowsError(try f.queue(size: 0)) { XCTAssertEqual($0 as? VirtqueueError, .queueSizeInvalid(0)) }
    }

    func testRejectsQueueSizeAbove32768() throws {
        let f = try RingFixture(queueSize: 8, ramSize: 4 << 20)
        for n: UInt32 in [65536, 1 << 20, UInt32(1) << 31] {
            XCTAssertThrowsError(try f.queue(size: n), "size \(n)") {
                XCTAssertEqual($0 as? VirtqueueError, .queueSizeInvalid(n))
            }
        }
    }

    func testAcceptsMaximumQueueSize32768() throws {
        let f = try RingFixture(queueSize: 32768, ramSize: 2 << 20)
        let vq = try f.queue()
        XCTAssertEqual(vq.size, 32768)
        // Entries in the last slot and after the wrap land where the driver put them.
        f.driver.setAvailIndex(32767)
        let vq2 = try f.queue(lastAvailIdx: 32767)
        let h1 = f.driver.add([.init(gpa: f.buffer([1]), length: 1, writable: false)])
        let h2 = f.driver.add([.init(gpa: f.buffer([2]), length: 1, writable: false)])
        XCTAssertEqual(try vq2.pendingCount(), 2)
        XCTAssertEqual(try vq2.popHead(), h1)
        XCTAssertEqual(try vq2.popHead(), h2)
        XCTAssertEqual(vq2.lastAvailIdx, 32769)
        _ = vq
    }

    func testStartsFromUsedIndexFoundInRing() throws {
        let f = try RingFixture(queueSize: 8)
        f.setUsedIndexInRing(1234)
        let vq = try f.queue(lastAvailIdx: 1234)
        XCTAssertEqual(vq.usedIdx, 1234)
        XCTAssertEqual(vq.lastAvailIdx, 1234)
        vq.pushUsed(head: 5, length: 77)
        vq.publishUsed()
        XCTAssertEqual(f.driver.usedIndex, 1235)
        let e = f.usedElement(slot: 1234 % 8)
        XCTAssertEqual(e.id, 5)
        XCTAssertEqual(e.len, 77)
    }

    func testRemapFollowsNewMemoryTable() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue()
        // A fresh mapping of the same memfd: the queue must use it after remap.
        let region2 = try mapRegion(f.ram)
        let memory2 = GuestMemory(regions: [region2])
        try vq.remap(memory: memory2)
        XCTAssertTrue(vq.memory === memory2)
        let data = pattern(8, seed: 2)
        let gpa = f.buffer(data)
        f.driver.add([.init(gpa: gpa, length: 8, writable: false)])
        var seg = ChainSegments(capacity: 2)
        defer { seg.deallocate() }
        try walkNext(vq, &seg)
        XCTAssertEqual(seg.base(0), region2.host + Int(gpa - f.ram.guestAddress))
        XCTAssertEqual(seg.segments, [Segment(bytes: data, writable: false)])

        XCTAssertThrowsError(try vq.remap(memory: .empty)) { XCTAssertNotNil(ringAddressProblem($0)) }
        XCTAssertTrue(vq.memory === memory2, "a failed remap keeps the old table")
    }
}
