#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Exports
import Foundation
import VhostUserTestSupport
import XCTest

/// Issue 14, finding 5: out of file descriptors, an export's accept loop pauses (it does not spin on a listener
/// that stays readable), says so once, and takes the waiting frontend once fds are back.
final class FDExhaustionTests: ExportTestCase {
    func testAcceptLoopPausesWhenOutOfFileDescriptors() throws {
        let s = try serve(id: "diskA")
        // The client's socket is made while fds remain; only its connect happens after the limit drops.
        let client = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        XCTAssertGreaterThanOrEqual(client, 0)
        defer { close(client) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            for (i, b) in s.socket.utf8.enumerated() { p[i] = b }
        }
        let saved = vdv_nofile_soft_limit()
        // The lowest free fd number becomes the limit: no new fd can be made in this process until it is restored.
        let lowest = dup(0)
        XCTAssertGreaterThan(lowest, 0)
        close(lowest)
        XCTAssertEqual(vdv_set_nofile_soft_limit(UInt64(lowest)), 0)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(client, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        let seen = eventually { logs.contains("out of file descriptors") }
        XCTAssertEqual(vdv_set_nofile_soft_limit(saved), 0)
        XCTAssertEqual(rc, 0)
        XCTAssertTrue(seen, "\(logs.all)")
        // Once fds are back the waiting connection is accepted: the pause ended without anything else happening.
        XCTAssertTrue(eventually { logs.contains("file descriptors available again; accepting") }, "\(logs.all)")
        XCTAssertEqual(logs.all.filter { $0.contains("out of file descriptors") }.count, 1, "\(logs.all)")
        XCTAssertTrue(logs.all.first { $0.contains("out of file descriptors") }?.contains("export=diskA") ?? false)
        shutdown(client, Int32(SHUT_RDWR))
        XCTAssertEqual(try BlkTestClient(socket: s.socket).read(sector: 4, count: 512).1, imageBytes(4 * 512, 512))
    }
}
