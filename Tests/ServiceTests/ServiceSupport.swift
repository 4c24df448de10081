#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Service
import VhostUserTestSupport
import XCTest

/// Image content every byte of which depends on its offset.
func imageByte(_ offset: Int) -> UInt8 { UInt8(truncatingIfNeeded: (offset &* 7) ^ (offset >> 9) ^ 0x5a) }
func imageBytes(_ offset: Int, _ count: Int) -> [UInt8] { (offset..<(offset + count)).map(imageByte) }
func payload(_ count: Int, seed: UInt8) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ Int(seed) &* 101 &+ 1) | 0x01 }
}

func fileStat(_ path: String) -> stat? {
    var st = stat()
    return lstat(path, &st) == 0 ? st : nil
}

func isSocket(_ path: String) -> Bool { fileStat(path).map { $0.st_mode & S_IFMT == S_IFSOCK } ?? false }

/// A temporary directory, the built binaries, and vdevd processes that are always reaped.
class ServiceTestCase: XCTestCase {
    var dir: String!
    var running: [Process] = []

    override func setUpWithError() throws {
        try super.setUpWithError()
        dir = try makeTemporaryDirectory("/tmp/vdevd-svc-")
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

    func image(_ name: String = "disk.img", size: Int = 1 << 20) throws -> String {
        let p = path(name)
        var data = [UInt8](repeating: 0, count: size)
        for i in 0..<size { data[i] = imageByte(i) }
        try Data(data).write(to: URL(fileURLWithPath: p))
        return p
    }

    func write(_ text: String, to name: String) throws -> String {
        let p = path(name)
        try text.write(toFile: p, atomically: false, encoding: .utf8)
        return p
    }

    /// A built executable of this package.
    static func binary(_ name: String) -> String? {
        var candidates: [String] = []
        if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            var u = URL(fileURLWithPath: exe).deletingLastPathComponent()
            for _ in 0..<4 {
                candidates.append(u.appendingPathComponent(name).path)
                u = u.deletingLastPathComponent()
            }
        }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        candidates.append(root.appendingPathComponent(".build/debug/\(name)").path)
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    struct Daemon {
        let process: Process
        let stderr: String
        let stdout: String
        func err() -> String { (try? String(contentsOfFile: stderr, encoding: .utf8)) ?? "" }
        func out() -> String { (try? String(contentsOfFile: stdout, encoding: .utf8)) ?? "" }
        var pid: Int32 { process.processIdentifier }
    }

    func launch(_ args: [String], environment: [String: String]? = nil) throws -> Daemon {
        try launch("vdevd", args, environment: environment)
    }

    func launch(_ name: String, _ args: [String], environment: [String: String]? = nil) throws -> Daemon {
        guard let bin = Self.binary(name) else {
            XCTFail("\(name) not found: run `swift build` first")
            throw TestSupportError("no binary")
        }
        let n = running.count
        let out = path("\(name).out.\(n)"), err = path("\(name).err.\(n)")
        FileManager.default.createFile(atPath: out, contents: nil)
        FileManager.default.createFile(atPath: err, contents: nil)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: bin)
        p.arguments = args
        if let environment { p.environment = environment }
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = FileHandle(forWritingAtPath: out)
        p.standardError = FileHandle(forWritingAtPath: err)
        try p.run()
        running.append(p)
        return Daemon(process: p, stderr: err, stdout: out)
    }

    /// Waits for exit (30 s safety net, not a timed assertion); the exit status.
    func waitExit(_ d: Daemon, file: StaticString = #filePath, line: UInt = #line) -> Int32? {
        let deadline = Date().addingTimeInterval(30)
        while d.process.isRunning && Date() < deadline { usleep(5000) }
        guard !d.process.isRunning else {
            XCTFail("process did not exit; stderr:\n\(d.err())", file: file, line: line)
            return nil
        }
        XCTAssertEqual(d.process.terminationReason, .exit, "killed by a signal; stderr:\n\(d.err())", file: file, line: line)
        return d.process.terminationStatus
    }

    func run(_ args: [String]) throws -> (status: Int32?, stdout: String, stderr: String) { try run("vdevd", args) }

    func run(_ name: String, _ args: [String]) throws -> (status: Int32?, stdout: String, stderr: String) {
        let d = try launch(name, args)
        let st = waitExit(d)
        return (st, d.out(), d.err())
    }

    /// Waits until a log line containing `text` appears or the process exits.
    @discardableResult
    func waitLog(_ d: Daemon, _ text: String = "vdevd ready", file: StaticString = #filePath, line: UInt = #line) -> Bool {
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            if d.err().contains(text) { return true }
            if !d.process.isRunning { break }
            usleep(5000)
        }
        XCTFail("never logged '\(text)'; stderr:\n\(d.err())", file: file, line: line)
        return false
    }

    func stop(_ d: Daemon, file: StaticString = #filePath, line: UInt = #line) {
        kill(d.pid, SIGTERM)
        XCTAssertEqual(waitExit(d, file: file, line: line), 0, file: file, line: line)
    }

    func blk(_ id: String, _ img: String, _ sock: String, _ extra: String = "") -> String {
        "vhost-user-blk,id=\(id),path=\(img),socket=\(sock)" + (extra.isEmpty ? "" : "," + extra)
    }

    /// One management request.
    func manage(_ socket: String, _ fields: [String: String]) throws -> ManagementReply {
        try ManagementClient(path: socket).request(fields)
    }
}

/// Runs `body`; what it says cannot be made on this machine (`Unavailable`) skips the test with the reason.
func skipUnavailable<T>(_ body: () throws -> T) throws -> T {
    do { return try body() } catch let e as Unavailable { throw XCTSkip(e.description) }
}
