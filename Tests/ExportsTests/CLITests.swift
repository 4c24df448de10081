#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Exports
import Foundation
import VhostUserTestSupport
import XCTest

/// The `vdevd` binary as an operator runs it.
final class CLITests: XCTestCase {
    var dir: String!
    var running: [Process] = []

    override func setUpWithError() throws {
        try super.setUpWithError()
        dir = try makeTemporaryDirectory("/tmp/vdevd-ct-")
    }

    override func tearDown() {
        for p in running where p.isRunning {
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
        }
        running.removeAll()
        if let dir { try? FileManager.default.removeItem(atPath: dir) }
        super.tearDown()
    }

    func path(_ name: String) -> String { "\(dir!)/\(name)" }

    /// The built binary: next to the test bundle, or under the package's .build/debug.
    static var binary: String? {
        var candidates: [String] = []
        if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            var u = URL(fileURLWithPath: exe).deletingLastPathComponent()
            // Inside vdevdPackageTests.xctest/... on some layouts: walk up to the build directory.
            for _ in 0..<4 {
                candidates.append(u.appendingPathComponent("vdevd").path)
                u = u.deletingLastPathComponent()
            }
        }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        candidates.append(root.appendingPathComponent(".build/debug/vdevd").path)
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    struct Daemon {
        let process: Process
        let stdout: String
        let stderr: String
        func err() -> String { (try? String(contentsOfFile: stderr, encoding: .utf8)) ?? "" }
        func out() -> String { (try? String(contentsOfFile: stdout, encoding: .utf8)) ?? "" }
    }

    func launch(_ args: [String]) throws -> Daemon {
        guard let bin = CLITests.binary else {
            XCTFail("vdevd binary not found: run `swift build` first")
            throw TestSupportError("no binary")
        }
        let n = running.count
        let out = path("stdout.\(n)"), err = path("stderr.\(n)")
        FileManager.default.createFile(atPath: out, contents: nil)
        FileManager.default.createFile(atPath: err, contents: nil)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: bin)
        p.arguments = args
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = FileHandle(forWritingAtPath: out)
        p.standardError = FileHandle(forWritingAtPath: err)
        try p.run()
        running.append(p)
        return Daemon(process: p, stdout: out, stderr: err)
    }

    /// Waits for exit (30 s safety net); returns the exit status.
    func waitExit(_ d: Daemon, file: StaticString = #filePath, line: UInt = #line) -> Int32? {
        let deadline = Date().addingTimeInterval(30)
        while d.process.isRunning && Date() < deadline { usleep(5000) }
        guard !d.process.isRunning else {
            XCTFail("vdevd did not exit; stderr:\n\(d.err())", file: file, line: line)
            return nil
        }
        XCTAssertEqual(d.process.terminationReason, .exit, "killed by a signal; stderr:\n\(d.err())", file: file, line: line)
        return d.process.terminationStatus
    }

    func run(_ args: [String]) throws -> (status: Int32?, stdout: String, stderr: String) {
        let d = try launch(args)
        let st = waitExit(d)
        return (st, d.out(), d.err())
    }

    /// Waits until the daemon says it is ready (every export listening) or exits.
    func waitReady(_ d: Daemon, file: StaticString = #filePath, line: UInt = #line) -> Bool {
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            if d.err().contains("vdevd ready") { return true }
            if !d.process.isRunning { break }
            usleep(5000)
        }
        XCTFail("vdevd never became ready; stderr:\n\(d.err())", file: file, line: line)
        return false
    }

    func image(_ name: String = "disk.img", size: Int = 1 << 20) throws -> String {
        let p = path(name)
        try createImage(at: p, size: size)
        return p
    }

    func spec(_ id: String, _ img: String, _ sock: String, _ extra: String = "") -> String {
        "vhost-user-blk,id=\(id),path=\(img),socket=\(sock)" + (extra.isEmpty ? "" : "," + extra)
    }

    // MARK: usage errors: status 2, nothing created

    func testUnknownKeyExitsTwoNamingExportAndKey() throws {
        let img = try image(), sock = path("d.sock")
        let r = try run(["--export", spec("disk7", img, sock, "colour=blue")])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("disk7"), r.stderr)
        XCTAssertTrue(r.stderr.contains("colour"), r.stderr)
        XCTAssertNil(fileStat(sock))
    }

    func testBadValueExitsTwoNamingKey() throws {
        let img = try image(), sock = path("d.sock")
        let r = try run(["--export", spec("disk8", img, sock, "num-queues=abc")])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("num-queues"), r.stderr)
        XCTAssertTrue(r.stderr.contains("disk8"), r.stderr)
        XCTAssertTrue(r.stderr.contains("abc"), r.stderr)
        XCTAssertNil(fileStat(sock))
        for bad in ["num-queues=0", "num-queues=65", "queue-size=100", "readonly=maybe", "logical-block-size=1024",
                    "socket-mode=999", "poller=x"] {
            let key = String(bad.prefix { $0 != "=" })
            let r2 = try run(["--export", spec("disk8", img, sock, bad)])
            XCTAssertEqual(r2.status, 2, bad)
            XCTAssertTrue(r2.stderr.contains(key), "\(bad): \(r2.stderr)")
        }
    }

    func testUnknownTypeExitsTwo() throws {
        let img = try image()
        let r = try run(["--export", "vhost-user-gpu,id=n0,path=\(img),socket=\(path("n.sock"))"])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("vhost-user-gpu"), r.stderr)
        XCTAssertTrue(r.stderr.contains("vhost-user-blk"), r.stderr)  // lists the known types
    }

    func testMissingRequiredKeyAndDuplicatesExitTwo() throws {
        let img = try image()
        var r = try run(["--export", "vhost-user-blk,id=d0,path=\(img)"])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("socket"), r.stderr)
        r = try run(["--export", spec("d0", img, path("a.sock")), "--export", spec("d0", img, path("b.sock"))])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("d0"), r.stderr)
        r = try run(["--export", spec("d0", img, path("a.sock")), "--export", spec("d1", img, path("a.sock"))])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("a.sock"), r.stderr)
        r = try run(["--export", spec("d0", img, path("a.sock"), "num-queues=2,num-queues=3")])
        XCTAssertEqual(r.status, 2)
        XCTAssertNil(fileStat(path("a.sock")))
    }

    func testBadGlobalOptionsExitTwo() throws {
        let img = try image()
        XCTAssertEqual(try run([]).status, 2)
        XCTAssertEqual(try run(["--bogus"]).status, 2)
        XCTAssertEqual(try run(["--pollers", "0", "--export", spec("d0", img, path("a.sock"))]).status, 2)
        XCTAssertEqual(try run(["--log-level", "loud", "--export", spec("d0", img, path("a.sock"))]).status, 2)
        let r = try run(["--pollers", "2", "--export", spec("d0", img, path("a.sock"), "poller=2")])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("poller"), r.stderr)
        XCTAssertNil(fileStat(path("a.sock")))
    }

    func testHelpListsEveryKey() throws {
        let r = try run(["--help"])
        XCTAssertEqual(r.status, 0)
        let text = r.stdout + r.stderr
        XCTAssertTrue(text.contains("vhost-user-blk"), text)
        // Every key the parser accepts is documented, including these that the tests rely on.
        let keys = ExportSpec.keys[.vhostUserBlk]!.map(\.name)
        let baseline: Set = ["id", "path", "socket", "num-queues", "queue-size", "readonly", "direct",
                             "logical-block-size", "write-cache", "socket-mode", "poller"]
        XCTAssertTrue(baseline.isSubset(of: Set(keys)), "\(keys)")
        let lines = text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        for k in Set(keys).union(baseline) {
            XCTAssertTrue(lines.contains { $0.hasPrefix(k + " ") }, "--help has no line for key '\(k)':\n\(text)")
        }
        XCTAssertTrue(lines.contains { $0.hasPrefix("id (required)") }, text)
    }

    // MARK: the socket path

    func testRegularFileAtSocketPathIsRefusedAndUntouched() throws {
        let img = try image(), sock = path("not-a-socket")
        try Data("keep me".utf8).write(to: URL(fileURLWithPath: sock))
        let r = try run(["--export", spec("d0", img, sock)])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertNotNil(r.status)
        XCTAssertTrue(r.stderr.contains(sock), r.stderr)
        XCTAssertEqual(try fileContents(sock), Data("keep me".utf8))
        XCTAssertFalse(isSocket(sock))
    }

    func testFailingSecondExportRemovesTheFirstOnesSocket() throws {
        let img = try image(), good = path("good.sock"), bad = path("bad.sock")
        try Data("x".utf8).write(to: URL(fileURLWithPath: bad))
        let r = try run(["--export", spec("d0", img, good), "--export", spec("d1", img, bad)])
        XCTAssertEqual(r.status, 1)
        XCTAssertNil(fileStat(good))
        XCTAssertEqual(try fileContents(bad), Data("x".utf8))
    }

    func testMissingImageFailsNamingTheExport() throws {
        let r = try run(["--export", spec("ghost", path("nope.img"), path("g.sock"))])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("ghost"), r.stderr)
        XCTAssertNil(fileStat(path("g.sock")))
    }

    func testStaleSocketIsReplacedAndServed() throws {
        let img = try image(), sock = path("stale.sock")
        let fd = vdv_unix_listen(sock, 0o600, 1)
        XCTAssertGreaterThanOrEqual(fd, 0)
        close(fd)
        XCTAssertTrue(isSocket(sock))
        let d = try launch(["--export", spec("d0", img, sock)])
        guard waitReady(d) else { return }
        let c = try BlkTestClient(socket: sock)
        let data = payload(4096, seed: 70)
        XCTAssertEqual(try c.write(sector: 16, data: data), Status.ok)
        XCTAssertEqual(try c.read(sector: 0, count: 512).1, imageBytes(0, 512))
        XCTAssertEqual(try readFile(img, offset: 16 * 512, count: 4096), data)
        kill(d.process.processIdentifier, SIGTERM)
        XCTAssertEqual(waitExit(d), 0)
    }

    func testSecondDaemonOnALiveSocketIsRefused() throws {
        let img = try image(), sock = path("live.sock")
        let d1 = try launch(["--export", spec("d0", img, sock)])
        guard waitReady(d1) else { return }
        let r = try run(["--export", spec("d1", img, sock)])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("listening"), r.stderr)
        // The first daemon's socket is still there and still served.
        XCTAssertTrue(isSocket(sock))
        let c = try BlkTestClient(socket: sock)
        XCTAssertEqual(try c.read(sector: 1, count: 512).1, imageBytes(512, 512))
        kill(d1.process.processIdentifier, SIGTERM)
        XCTAssertEqual(waitExit(d1), 0)
    }

    // MARK: signals and the socket file

    func testSigtermExitsZeroAndRemovesTheSocket() throws {
        let img = try image(), sock = path("t.sock")
        let d = try launch(["--export", spec("d0", img, sock)])
        guard waitReady(d) else { return }
        XCTAssertTrue(isSocket(sock))
        kill(d.process.processIdentifier, SIGTERM)
        XCTAssertEqual(waitExit(d), 0)
        XCTAssertNil(fileStat(sock))
        XCTAssertTrue(d.err().contains("vdevd stopped"), d.err())
    }

    func testSigtermWithAConnectedFrontendExitsZero() throws {
        let img = try image(), s1 = path("a.sock"), s2 = path("b.sock")
        let d = try launch(["--pollers", "2", "--export", spec("d0", img, s1, "num-queues=2"),
                            "--export", spec("d1", img, s2, "readonly=on")])
        guard waitReady(d) else { return }
        let c = try BlkTestClient(socket: s1, queueCount: 2)
        XCTAssertEqual(try c.write(sector: 0, data: payload(512, seed: 71), queue: 1), Status.ok)
        let c2 = try BlkTestClient(socket: s2)
        XCTAssertEqual(try c2.read(sector: 0, count: 512).1, payload(512, seed: 71))
        kill(d.process.processIdentifier, SIGINT)
        XCTAssertEqual(waitExit(d), 0)
        XCTAssertNil(fileStat(s1))
        XCTAssertNil(fileStat(s2))
        XCTAssertTrue(c.frontend.backendClosed())
        XCTAssertEqual(try readFile(img, offset: 0, count: 512), payload(512, seed: 71))
    }

    func testSocketModeSetsPermissionBits() throws {
        let img = try image()
        for (mode, bits) in [("0660", 0o660), ("0640", 0o640), ("0666", 0o666)] {
            let sock = path("m\(mode).sock")
            let d = try launch(["--export", spec("m\(mode)", img, sock, "socket-mode=\(mode)")])
            guard waitReady(d) else { return }
            XCTAssertEqual(fileStat(sock).map { Int($0.st_mode & 0o777) }, bits, mode)
            XCTAssertTrue(isSocket(sock))
            kill(d.process.processIdentifier, SIGTERM)
            XCTAssertEqual(waitExit(d), 0)
        }
        // Default 0600: only vdevd's user may connect.
        let sock = path("default.sock")
        let d = try launch(["--export", spec("dm", img, sock)])
        guard waitReady(d) else { return }
        XCTAssertEqual(fileStat(sock).map { Int($0.st_mode & 0o777) }, 0o600)
        kill(d.process.processIdentifier, SIGTERM)
        XCTAssertEqual(waitExit(d), 0)
    }
}
