#if canImport(Glibc)
import Glibc
#endif
import VhostUserTestSupport
import Virtio
import XCTest

/// The retired-table rule: while an older table is still held (by in-flight requests on a poller), a new one is
/// refused after the wait; once released, admitted.
final class GuestMemoryBudgetRuleTests: XCTestCase {
    func testNewTableIsRefusedWhileAnOlderRetiredTableIsHeld() throws {
        let saved = GuestMemoryBudget.retiredWaitMillis
        GuestMemoryBudget.retiredWaitMillis = 50
        defer { GuestMemoryBudget.retiredWaitMillis = saved }
        let budget = GuestMemoryBudget()
        let a = try GuestRAM(size: 1 << 20), b = try GuestRAM(size: 2 << 20)
        var retired: MemoryRegion? = try MemoryRegion(fd: a.fd, guestAddress: 0, size: a.size, userAddress: a.userAddress,
                                                      mmapOffset: 0, budget: budget)
        let current = try MemoryRegion(fd: b.fd, guestAddress: 0, size: b.size, userAddress: b.userAddress,
                                       mmapOffset: 0, budget: budget)
        XCTAssertEqual(budget.mappedBytes, 3 << 20)
        let why = budget.refusal(newBytes: 1 << 20, currentBytes: current.mappedBytes)
        XCTAssertEqual(why, "export at its cap of retired memory tables: 1048576 bytes of an older table are still held by in-flight requests after 50 ms")
        retired = nil
        XCTAssertNil(retired)
        XCTAssertEqual(budget.mappedBytes, 2 << 20)
        XCTAssertNil(budget.refusal(newBytes: 1 << 20, currentBytes: current.mappedBytes))
    }
}
