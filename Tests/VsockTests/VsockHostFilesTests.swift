#if canImport(Glibc)
import Glibc
#endif
import VhostUserTestSupport
import XCTest

/// Issue 14, finding 7 (files): what a guest or a host peer can make vdevd touch on the host's file system,
/// and what it can make vdevd write into its log.
final class VsockHostFilesTests: VsockTestCase {
    /// A symlink at `<uds-path>_<port>` (here to another listener, as it was to B's vhost-user socket) is not
    /// followed: the guest gets RST and the target never sees a connection.
    func testSymlinkAtHostPortPathIsNotFollowed() throws {
        let a = try serve(id: "a", cid: 3)
        let d = try guest(a)
        let target = try listen(path("elsewhere.sock"))
        XCTAssertEqual(symlink(path("elsewhere.sock"), a.portPath(7000)), 0)
        XCTAssertNil(try d.connect(port: 7000, localPort: 100), "the guest reached a socket through a symlink")
        XCTAssertFalse(Host.readable(target, timeout: 0.2), "the symlink's target got a connection")
        XCTAssertTrue(logs.contains("\(a.portPath(7000)) is a symbolic link; not connecting"), "\(logs.all)")
        // A guest retrying does not flood the log: refused again, logged once, counted each time.
        XCTAssertNil(try d.connect(port: 7000, localPort: 110))
        XCTAssertEqual(logs.all.filter { $0.contains("is a symbolic link") }.count, 1, "\(logs.all)")
        XCTAssertEqual(a.counter(.errors, 1), 2)
        // A real socket at a port path still works.
        let lfd = try listen(a.portPath(7001))
        let (c, h) = try open(d, lfd, port: 7001, localPort: 101)
        try Host.writeAll(h, [1, 2, 3])
        XCTAssertEqual(try receive(d, c, count: 3), [1, 2, 3])
    }

    /// A hard link to another socket (it could be B's vhost-user socket) is refused too.
    func testHardLinkAtHostPortPathIsRefused() throws {
        let a = try serve(id: "a", cid: 3)
        let d = try guest(a)
        let target = try listen(path("elsewhere.sock"))
        XCTAssertEqual(link(path("elsewhere.sock"), a.portPath(7002)), 0)
        XCTAssertNil(try d.connect(port: 7002, localPort: 102))
        XCTAssertFalse(Host.readable(target, timeout: 0.2))
        XCTAssertTrue(logs.contains("\(a.portPath(7002)) has 2 hard links; not connecting"), "\(logs.all)")
    }

    /// A regular file at a port path is not a socket: refused and logged.
    func testRegularFileAtHostPortPathIsRefused() throws {
        let a = try serve(id: "a", cid: 3)
        let d = try guest(a)
        XCTAssertTrue(FileManager.default.createFile(atPath: a.portPath(7003), contents: Data([1])))
        XCTAssertNil(try d.connect(port: 7003, localPort: 103))
        XCTAssertTrue(logs.contains("\(a.portPath(7003)) is not a socket"), "\(logs.all)")
    }

    /// A CONNECT line with escape codes, CR and NUL reaches the log escaped: no raw control byte is written.
    func testConnectLineControlCharactersAreEscapedInLog() throws {
        let a = try serve(id: "a", cid: 3)
        _ = try guest(a)
        let fd = try Host.connect(a.uds)
        fdsToClose.append(fd)
        try Host.writeAll(fd, [0x1b] + Array("[2J\rEVIL".utf8) + [0, 0x5c, 0x0a])
        // The device logs, then closes the connection: at EOF the line is there.
        XCTAssertEqual(try Host.readToEnd(fd).data, [])
        let line = logs.all.first { $0.contains("expected CONNECT <port>") }
        XCTAssertNotNil(line, "\(logs.all)")
        XCTAssertTrue(line?.contains("'\\x1b[2J\\x0dEVIL\\x00\\x5c'") ?? false, line ?? "")
        for l in logs.all {
            XCTAssertFalse(l.utf8.contains { $0 < 0x20 }, "raw control byte in log line: \(Array(l.utf8))")
        }
    }

    /// A file put at the uds-path while vdevd runs is not deleted when the export stops.
    func testFileReplacingUdsPathIsNotDeletedAtStop() throws {
        let a = try serve(id: "a", cid: 3)
        XCTAssertEqual(unlink(a.uds), 0)
        XCTAssertTrue(FileManager.default.createFile(atPath: a.uds, contents: Data("not yours".utf8)))
        for e in exports.reversed() { e.stop() }
        exports.removeAll()
        XCTAssertEqual(FileManager.default.contents(atPath: a.uds), Data("not yours".utf8))
    }
}
