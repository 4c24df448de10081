#if canImport(Glibc)
import Glibc
#endif
import Exports
import Foundation
import VhostUserTestSupport
import Virtio
import XCTest

/// Issue 14, finding 3: a frontend cannot make an export map more than max-guest-memory, nor pile up retired
/// memory tables.
final class GuestMemoryBudgetTests: ExportTestCase {
    func testMemoryTableOverMaxGuestMemoryIsRefused() throws {
        let s = try serve(id: "diskA", options: "max-guest-memory=32M")
        XCTAssertEqual(s.export.memoryBudget.limit, 32 << 20)
        let fe = try ackingFrontend(s.socket)
        let big = try GuestRAM(size: 48 << 20, guestAddress: 0)
        XCTAssertNotEqual(try fe.memTableAck([big]), 0)
        let line = logs.all.first { $0.contains("max-guest-memory=33554432") }
        XCTAssertNotNil(line, "\(logs.all)")
        XCTAssertTrue(line?.contains("export=diskA") ?? false)
        XCTAssertEqual(s.export.memoryBudget.mappedBytes, 0, "the refused table was mapped anyway")
        // Within the cap: accepted; a second table of the same size would exceed it while both are mapped.
        let small = try GuestRAM(size: 16 << 20, guestAddress: 0)
        XCTAssertEqual(try fe.memTableAck([small]), 0)
        XCTAssertEqual(s.export.memoryBudget.mappedBytes, 16 << 20)
        let other = try GuestRAM(size: 20 << 20, guestAddress: 0)
        XCTAssertNotEqual(try fe.memTableAck([other]), 0)
        XCTAssertEqual(s.export.memoryBudget.mappedBytes, 16 << 20)
    }

    /// Tables swapped on an idle export are released at once: the account follows the table in use, and every
    /// swap is accepted (the retired-table rule never refuses what nothing holds).
    func testSwappedTablesAreReleasedAndAccounted() throws {
        let s = try serve(id: "diskA")
        let c = try BlkTestClient(socket: s.socket, ramSize: 8 << 20)
        XCTAssertEqual(s.export.memoryBudget.mappedBytes, 8 << 20)
        for i in 0..<5 {
            let extra = try GuestRAM(size: 4 << 20, guestAddress: 1 << 40)
            XCTAssertEqual(try c.frontend.memTableAck([c.ram, extra]), 0, "swap \(i)")
            XCTAssertEqual(try c.read(sector: UInt64(i), count: 512).1, imageBytes(i * 512, 512))
            XCTAssertTrue(eventually { s.export.memoryBudget.mappedBytes == 12 << 20 }, "\(s.export.memoryBudget.mappedBytes)")
        }
        c.frontend.disconnect()
        XCTAssertTrue(eventually { s.export.memoryBudget.mappedBytes == 0 }, "\(s.export.memoryBudget.mappedBytes)")
    }

    func testMaxGuestMemoryKeyRejectsGarbage() {
        XCTAssertThrowsError(try ExportSpec.parse("vhost-user-blk,id=d,path=/x,socket=/s,max-guest-memory=lots")) {
            XCTAssertTrue("\($0)".contains("expected a size like 65536, 512M or 64G, got 'lots'"), "\($0)")
        }
        XCTAssertEqual(try ExportSpec.parse("vhost-user-blk,id=d,path=/x,socket=/s,max-guest-memory=2T").maxGuestMemory, 2 << 40)
    }
}
