#if canImport(Glibc)
import Glibc
#endif
import Exports
import VhostUserTestSupport
import Vsock
import XCTest

/// Issue 14, item 7: exports joined through groups, directly or through a third export, share one poller, so the
/// relay between siblings never crosses threads.
final class VsockGroupPollerTests: VsockTestCase {
    /// X in g1 on poller 0, Y in g2 on poller 1: Z in g1+g2 would join them across two threads, and is refused.
    func testGroupSplitThroughAThirdExportIsRefused() throws {
        _ = try pollerGroup(count: 2)
        let g1 = uniqueGroup("g1-"), g2 = uniqueGroup("g2-")
        _ = try serve(id: "x", cid: 3, options: "groups=\(g1),poller=0")
        _ = try serve(id: "y", cid: 4, options: "groups=\(g2),poller=1")
        XCTAssertThrowsError(try serve(id: "z", cid: 5, options: "groups=\(g1)+\(g2)")) {
            XCTAssertTrue("\($0)".contains("its groups \(g1) (poller 0) and \(g2) (poller 1) are served by different pollers"), "\($0)")
        }
        // Nothing of z was left behind: its host socket is gone and its CID is not reachable.
        var st = stat()
        XCTAssertNotEqual(lstat(path("z.vsock"), &st), 0, "the refused export left its host socket")
        XCTAssertEqual(VsockRegistry.shared.poller(forGroups: [g1]), 0)
        XCTAssertEqual(VsockRegistry.shared.poller(forGroups: [g2]), 1)
    }

    /// X in g1 on poller 1; Z in g1+g2 takes poller 1 and brings g2 with it; Y in g2 alone then lands on poller 1
    /// too (X and Y share no group, but both are Z's siblings).
    func testGroupsJoinedTransitivelyShareAPoller() throws {
        _ = try pollerGroup(count: 2)
        let g1 = uniqueGroup("t1-"), g2 = uniqueGroup("t2-")
        _ = try serve(id: "x", cid: 3, options: "groups=\(g1),poller=1")
        _ = try serve(id: "z", cid: 5, options: "groups=\(g1)+\(g2)")
        XCTAssertEqual(VsockRegistry.shared.poller(forGroups: [g2]), 1)
        _ = try serve(id: "y", cid: 4, options: "groups=\(g2)")
        // Asking y's group for another poller is refused with the reason.
        XCTAssertThrowsError(try serve(id: "w", cid: 6, options: "groups=\(g2),poller=0")) {
            XCTAssertTrue("\($0)".contains("its group is served by poller 1; poller=0 would split it"), "\($0)")
        }
        // Each export's queues start on poller 1 once a guest drives them.
        for (id, cid) in [("x", UInt64(3)), ("z", 5), ("y", 4)] {
            _ = try guest(VsockServed(export: exports.first { $0.id == id } as! VhostUserExport,
                                      socket: path("\(id).sock"), uds: path("\(id).vsock"), cid: cid))
            XCTAssertTrue(logs.all.contains { $0.contains("export=\(id)") && $0.contains("queue 0 started on poller 1 ") },
                          "\(id): \(logs.all.filter { $0.contains("export=\(id)") })")
        }
    }
}
