#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Exports
import Foundation
import VhostUserTestSupport
import XCTest

/// Issue 14, finding 7: at exit vdevd removes its socket file only if the path still holds the inode it made.
final class SocketInodeTests: ExportTestCase {
    private func stopAll() {
        for e in exports.reversed() { e.stop() }
        exports.removeAll()
    }

    func testOwnSocketIsRemovedAtStop() throws {
        let s = try serve()
        XCTAssertTrue(isSocket(s.socket))
        stopAll()
        XCTAssertNil(fileStat(s.socket), "the export's socket was left behind")
    }

    func testRegularFilePutAtSocketPathIsNotDeletedAtStop() throws {
        let s = try serve()
        XCTAssertEqual(unlink(s.socket), 0)
        XCTAssertTrue(FileManager.default.createFile(atPath: s.socket, contents: Data("keep me".utf8)))
        stopAll()
        XCTAssertEqual(FileManager.default.contents(atPath: s.socket), Data("keep me".utf8))
    }

    func testAnotherProgramsSocketAtSocketPathIsNotDeletedAtStop() throws {
        let s = try serve()
        XCTAssertEqual(unlink(s.socket), 0)
        let other = vdv_unix_listen(s.socket, 0o600, 4)
        XCTAssertGreaterThanOrEqual(other, 0)
        defer { close(other) }
        let before = try XCTUnwrap(fileStat(s.socket))
        stopAll()
        let after = try XCTUnwrap(fileStat(s.socket), "another program's socket was deleted")
        XCTAssertEqual(after.st_ino, before.st_ino)
    }
}
