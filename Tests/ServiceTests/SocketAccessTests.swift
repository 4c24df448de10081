#if canImport(Glibc)
import Glibc
#endif
import Exports
import Foundation
import XCTest

/// Sockets are created with the access asked for, and a path that is not a socket is never touched.
final class SocketAccessTests: ServiceTestCase {
    let nobody: UInt32 = 65534

    /// Connects to `socket` as uid/gid 65534 (setpriv + socat); the exit status and stderr.
    func connectAsNobody(_ socket: String) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        p.arguments = ["--reuid=\(nobody)", "--regid=\(nobody)", "--clear-groups", "/usr/bin/socat", "-u",
                       "OPEN:/dev/null", "UNIX-CONNECT:\(socket)"]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
    }

    func requireRootAndTools() throws {
        guard getuid() == 0 else { throw XCTSkip("needs root to set owners and to connect as another uid") }
        for t in ["/usr/bin/setpriv", "/usr/bin/socat"] where !FileManager.default.isExecutableFile(atPath: t) {
            throw XCTSkip("\(t) not installed")
        }
        // Another user must be able to reach the directory; only the socket's own permissions may stop it.
        chmod(dir, 0o755)
    }

    func testModeOwnerAndGroupAreAppliedAndNothingIsLeftBehind() throws {
        try requireRootAndTools()
        let sock = path("a.sock")
        let l = try ListeningSocket(unixPath: sock, access: SocketAccess(mode: 0o640, owner: nobody, group: 123), backlog: 1)
        let st = try XCTUnwrap(fileStat(sock))
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFSOCK)
        XCTAssertEqual(st.st_mode & 0o7777, 0o640)
        XCTAssertEqual(st.st_uid, nobody)
        XCTAssertEqual(st.st_gid, 123)
        // The private directory it was made in is gone.
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["a.sock"])
        l.removeFile()
        XCTAssertNil(fileStat(sock))
    }

    func testAnotherUserIsRefusedByDefaultAndAdmittedAsOwner() throws {
        try requireRootAndTools()
        let closed = path("closed.sock"), open = path("open.sock")
        let a = try ListeningSocket(unixPath: closed, access: SocketAccess(), backlog: 4)
        let b = try ListeningSocket(unixPath: open, access: SocketAccess(mode: 0o600, owner: nobody), backlog: 4)
        XCTAssertEqual(fileStat(closed).map { $0.st_mode & 0o777 }, 0o600)
        let (refused, why) = try connectAsNobody(closed)
        XCTAssertNotEqual(refused, 0)
        XCTAssertTrue(why.contains("Permission denied"), why)
        let (admitted, err) = try connectAsNobody(open)
        XCTAssertEqual(admitted, 0, err)
        _ = (a, b)
    }

    func testDaemonAppliesTheExportKeys() throws {
        try requireRootAndTools()
        let img = try image(), sock = path("d.sock")
        let d = try launch(["--export", blk("d0", img, sock, "socket-mode=0660,socket-owner=\(nobody),socket-group=\(nobody)")])
        guard waitLog(d) else { return }
        let st = try XCTUnwrap(fileStat(sock))
        XCTAssertEqual(st.st_mode & 0o777, 0o660)
        XCTAssertEqual(st.st_uid, nobody)
        XCTAssertEqual(st.st_gid, nobody)
        let (status, err) = try connectAsNobody(sock)
        XCTAssertEqual(status, 0, err)
        stop(d)
    }

    func testNonSocketPathIsRefusedAndSurvives() throws {
        let file = path("precious"), sub = path("adir")
        try Data("keep me".utf8).write(to: URL(fileURLWithPath: file))
        mkdir(sub, 0o755)
        for p in [file, sub] {
            XCTAssertThrowsError(try ListeningSocket(unixPath: p, access: SocketAccess(), backlog: 1)) {
                XCTAssertEqual("\($0)", "socket \(p): exists and is not a socket; refusing to replace it")
            }
        }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: file)), Data("keep me".utf8))
        var isDir: ObjCBool = false
        XCTAssertTrue(FileManager.default.fileExists(atPath: sub, isDirectory: &isDir) && isDir.boolValue)
        // And through the daemon: exit 1 naming the path, the file unchanged, no private directory left.
        let r = try run(["--export", blk("d0", try image(), file)])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("\(file): exists and is not a socket"), r.stderr)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: file)), Data("keep me".utf8))
        XCTAssertFalse(try FileManager.default.contentsOfDirectory(atPath: dir).contains { $0.hasPrefix(".vd") })
    }

    func testSocketPathTooLongForThePrivateNameIsAClearError() throws {
        // 107 bytes fits sun_path, but the private name (`.vdXXXXXX/s` beside it) does not.
        let sub = path(String(repeating: "y", count: 105 - dir.count - 1))
        XCTAssertEqual(mkdir(sub, 0o755), 0)
        let p = sub + "/a"
        XCTAssertEqual(p.utf8.count, 107)
        XCTAssertThrowsError(try ListeningSocket(unixPath: p, access: SocketAccess(), backlog: 1)) {
            XCTAssertTrue("\($0)".contains("File name too long"), "\($0)")
        }
        XCTAssertNil(fileStat(p))
    }
}
