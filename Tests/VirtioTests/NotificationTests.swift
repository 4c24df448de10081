import XCTest
import Virtio
import VhostUserTestSupport
import CVdevd
#if canImport(Glibc)
import Glibc
#endif

/// Notification suppression (virtio 1.3, 2.7.7, 2.7.10), with and without VIRTIO_F_RING_EVENT_IDX.
final class NotificationTests: XCTestCase {
    let eventIdx = VirtioFeature.ringEventIdx
    let noNotify: UInt16 = 1   // VRING_USED_F_NO_NOTIFY

    /// Completes `n` buffers (the ring contents do not matter to the interrupt decision) and publishes them.
    func complete(_ vq: SplitVirtqueue, _ n: Int) {
        for _ in 0..<n { vq.pushUsed(head: 0, length: 0) }
        vq.publishUsed()
    }

    func testWithoutEventIdxInterruptsUnlessDriverSetsNoInterrupt() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue()
        complete(vq, 1)
        XCTAssertTrue(vq.needsInterrupt())
        f.driver.setNoInterrupt(true)
        complete(vq, 1)
        XCTAssertFalse(vq.needsInterrupt())
        complete(vq, 3)
        XCTAssertFalse(vq.needsInterrupt())
        f.driver.setNoInterrupt(false)
        complete(vq, 1)
        XCTAssertTrue(vq.needsInterrupt())
    }

    func testWithoutEventIdxUsedEventIsIgnored() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue()
        f.driver.setUsedEvent(1000)
        complete(vq, 1)
        XCTAssertTrue(vq.needsInterrupt())
        complete(vq, 1)
        XCTAssertTrue(vq.needsInterrupt())
    }

    func testWithEventIdxInterruptsOnlyWhenUsedIdxPassesUsedEvent() throws {
        let f = try RingFixture(queueSize: 8)
        f.driver.eventIdx = true
        let vq = try f.queue(features: eventIdx)
        XCTAssertTrue(vq.eventIdx)
        f.driver.setUsedEvent(0)
        complete(vq, 1)                         // used idx 0 -> 1 passes used_event 0
        XCTAssertTrue(vq.needsInterrupt())

        f.driver.setUsedEvent(3)                // "interrupt me once entry 3 is used" (idx becomes 4)
        complete(vq, 1)                         // 2
        XCTAssertFalse(vq.needsInterrupt())
        complete(vq, 1)                         // 3
        XCTAssertFalse(vq.needsInterrupt())
        complete(vq, 1)                         // 4: passes 3
        XCTAssertTrue(vq.needsInterrupt())

        f.driver.setUsedEvent(5)
        complete(vq, 3)                         // 4 -> 7 in one batch passes 5
        XCTAssertTrue(vq.needsInterrupt())

        f.driver.setUsedEvent(20)
        complete(vq, 2)                         // 9
        XCTAssertFalse(vq.needsInterrupt())

        // used_event already passed before the last signal: no new interrupt for it.
        f.driver.setUsedEvent(8)
        complete(vq, 1)                         // 10
        XCTAssertFalse(vq.needsInterrupt())
        f.driver.setUsedEvent(10)
        complete(vq, 1)                         // 11: passes 10
        XCTAssertTrue(vq.needsInterrupt())
    }

    func testWithEventIdxUsedEventComparisonWrapsAt65536() throws {
        let f = try RingFixture(queueSize: 8)
        f.setUsedIndexInRing(65532)
        let vq = try f.queue(features: eventIdx, lastAvailIdx: 65532)
        f.driver.setUsedEvent(65532)
        complete(vq, 1)                         // 65533
        XCTAssertTrue(vq.needsInterrupt())
        f.driver.setUsedEvent(65535)
        complete(vq, 1)                         // 65534
        XCTAssertFalse(vq.needsInterrupt())
        complete(vq, 1)                         // 65535
        XCTAssertFalse(vq.needsInterrupt())
        complete(vq, 1)                         // 0: passes 65535
        XCTAssertTrue(vq.needsInterrupt())
        f.driver.setUsedEvent(1)
        complete(vq, 3)                         // 0 -> 3 passes 1
        XCTAssertTrue(vq.needsInterrupt())
        f.driver.setUsedEvent(65534)            // behind us: far in the "future" only by wrap
        complete(vq, 2)                         // 5
        XCTAssertFalse(vq.needsInterrupt())
    }

    /// 2.7.7: with EVENT_IDX the device MUST ignore the avail flags' NO_INTERRUPT bit.
    func testWithEventIdxNoInterruptFlagIsIgnored() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue(features: eventIdx)
        complete(vq, 1)
        XCTAssertTrue(vq.needsInterrupt())
        f.driver.setNoInterrupt(true)
        f.driver.setUsedEvent(1)
        complete(vq, 1)                         // 2: passes 1
        XCTAssertTrue(vq.needsInterrupt())
    }

    func testEnableNotificationsPublishesAvailEventWithEventIdx() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue(features: eventIdx)
        for _ in 0..<3 { f.driver.add([.init(gpa: f.zeroed(1), length: 1, writable: true)]) }
        while try vq.popHead() != nil {}
        vq.disableNotifications()
        XCTAssertEqual(f.driver.availEvent, 0)
        vq.enableNotifications()
        XCTAssertTrue(vq.notificationsEnabled)
        XCTAssertEqual(f.driver.availEvent, 3, "kick me when you make entry 3 available")
        // 2.7.10: with EVENT_IDX the device keeps used flags at 0.
        XCTAssertEqual(f.driver.usedFlags, 0)
    }

    func testEnableNotificationsWritesLastAvailIndexAcrossWrap() throws {
        let f = try RingFixture(queueSize: 8)
        f.driver.setAvailIndex(65534)
        let vq = try f.queue(features: eventIdx, lastAvailIdx: 65534)
        for _ in 0..<3 { f.driver.add([.init(gpa: f.zeroed(1), length: 1, writable: true)]) }
        while try vq.popHead() != nil {}
        vq.enableNotifications()
        XCTAssertEqual(f.driver.availEvent, 1)
    }

    func testWithEventIdxDisableNotificationsLeavesUsedFlagsZero() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue(features: eventIdx)
        vq.disableNotifications()
        XCTAssertFalse(vq.notificationsEnabled)
        XCTAssertEqual(f.driver.usedFlags, 0)
        vq.enableNotifications()
        XCTAssertEqual(f.driver.usedFlags, 0)
    }

    func testWithoutEventIdxDisableSetsNoNotifyAndEnableClearsIt() throws {
        let f = try RingFixture(queueSize: 8)
        let vq = try f.queue()
        // avail_event is not part of the protocol without EVENT_IDX: a sentinel there must survive.
        vdv_store_relaxed_u16(f.ram.pointer(f.driver.usedGPA + 4 + 8 * 8), 0xBEEF)
        vq.disableNotifications()
        XCTAssertFalse(vq.notificationsEnabled)
        XCTAssertEqual(f.driver.usedFlags & noNotify, noNotify)
        vq.disableNotifications()
        XCTAssertEqual(f.driver.usedFlags, noNotify)
        vq.enableNotifications()
        XCTAssertTrue(vq.notificationsEnabled)
        XCTAssertEqual(f.driver.usedFlags & noNotify, 0)
        XCTAssertEqual(f.driver.availEvent, 0xBEEF)
        vq.disableNotifications()
        XCTAssertEqual(f.driver.usedFlags, noNotify, "disable works again after enable")
    }
}
