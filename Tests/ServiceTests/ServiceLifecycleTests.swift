#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Service
import VhostUserTestSupport
import XCTest

/// vdevd as a service: config file on the command line, SIGHUP, SIGTERM, sd_notify.
final class ServiceLifecycleTests: ServiceTestCase {
    func exportTable(_ id: String, _ img: String, _ extra: String = "") -> String {
        "\n[[export]]\ntype = \"vhost-user-blk\"\nid = \"\(id)\"\npath = \"\(img)\"\nsocket = \"\(path(id + ".sock"))\"\n\(extra)"
    }

    func testCheckConfigValidatesAndCreatesNothing() throws {
        let img = try image()
        let good = try write("[daemon]\npollers = 2\nmanagement-socket = \"\(path("m.sock"))\"\n" + exportTable("a", img) + exportTable("b", img),
                             to: "good.toml")
        var r = try run(["--check-config", good])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, "\(good): OK: 2 export(s) (a, b), 2 poller(s), management socket \(path("m.sock"))\n")
        let bad = try write(exportTable("a", img) + exportTable("b", img, "queue-size = 100\n"), to: "bad.toml")
        r = try run(["--check-config", bad])
        XCTAssertEqual(r.status, 2)
        XCTAssertEqual(r.stderr, "vdevd: \(bad):13: [[export]] #2 'b', key 'queue-size': must be a power of two, got 100\n")
        // A command-line export colliding with the file's.
        r = try run(["--check-config", good, "--export", blk("a", img, path("other.sock"))])
        XCTAssertEqual(r.status, 2)
        XCTAssertEqual(r.stderr, "vdevd: \(good):5: [[export]] #1 'a', key 'id': 'a' is already used (--export #1)\n")
        r = try run(["--check-config", path("missing.toml")])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.hasPrefix("vdevd: \(path("missing.toml")): cannot read"), r.stderr)
        r = try run(["--pollers", "x", "--check-config", good])
        XCTAssertEqual(r.status, 2)
        XCTAssertEqual(r.stderr, "vdevd: --pollers: expected an integer in 1...64, got 'x'\n")
        XCTAssertFalse(isSocket(path("a.sock")) || isSocket(path("m.sock")))
    }

    func testConfigAndCommandLineExportsAreServedTogether() throws {
        let img = try image("f.img"), img2 = try image("c.img")
        let cfg = try write("[daemon]\nmanagement-socket = \"\(path("m.sock"))\"\n" + exportTable("file0", img), to: "v.toml")
        let d = try launch(["--config", cfg, "--export", blk("cli0", img2, path("cli0.sock"))])
        guard waitLog(d) else { return }
        for (sock, image) in [(path("file0.sock"), img), (path("cli0.sock"), img2)] {
            let c = try BlkTestClient(socket: sock)
            XCTAssertEqual(try c.write(sector: 4, data: payload(512, seed: 9)), 0)
            XCTAssertEqual(try c.read(sector: 4, count: 512).1, payload(512, seed: 9))
            XCTAssertEqual(try c.read(sector: 5, count: 512).1, imageBytes(5 * 512, 512))
            _ = image
        }
        let list = try manage(path("m.sock"), ["command": "list"])
        XCTAssertEqual(list.exports?.map(\.id), ["cli0", "file0"])
        XCTAssertEqual(list.exports?.map(\.origin), ["--export #1", "\(cfg):4: [[export]] #1"])
        stop(d)
    }

    func testSighupAddsAndRemovesTheFilesExportsAndKeepsLiveOnes() throws {
        let img = try image()
        let mgmt = path("m.sock")
        let head = "[daemon]\nmanagement-socket = \"\(mgmt)\"\n"
        let cfg = try write(head + exportTable("keep", img) + exportTable("drop", img), to: "v.toml")
        let d = try launch(["--config", cfg])
        guard waitLog(d) else { return }
        // A VM on `keep` stays connected and served through the reload.
        let c = try BlkTestClient(socket: path("keep.sock"))
        XCTAssertEqual(try c.write(sector: 0, data: payload(512, seed: 3)), 0)
        // Also an export added by hand: the file's reload never touches it.
        XCTAssertTrue(try manage(mgmt, ["command": "add", "export": blk("byhand", img, path("byhand.sock"))]).ok)

        _ = try write(head + exportTable("keep", img, "readonly = true\n") + exportTable("new", img), to: "v.toml")
        kill(d.pid, SIGHUP)
        guard waitLog(d, "SIGHUP: config read again") else { return }
        XCTAssertTrue(d.err().contains("SIGHUP: config read again: 1 added, 1 removed, 1 left as they were, 0 failed"), d.err())
        XCTAssertTrue(d.err().contains("export=keep [Service] reload: export changed in the config file; a live export keeps its keys"), d.err())
        let ids = try manage(mgmt, ["command": "list"]).exports?.map(\.id)
        XCTAssertEqual(ids, ["keep", "byhand", "new"])
        XCTAssertNil(fileStat(path("drop.sock")))
        XCTAssertTrue(isSocket(path("new.sock")))
        // `keep` is still writable (its keys were not changed) and its VM never noticed.
        XCTAssertEqual(try c.write(sector: 1, data: payload(512, seed: 4)), 0)
        XCTAssertEqual(try c.read(sector: 0, count: 1024).1, payload(512, seed: 3) + payload(512, seed: 4))

        // A broken file on reload changes nothing.
        _ = try write(head + "[[export]]\ntype = 7\n", to: "v.toml")
        kill(d.pid, SIGHUP)
        guard waitLog(d, "SIGHUP: config not applied: \(cfg):4: [[export]] #1, key 'type': expected a string, got an integer") else { return }
        XCTAssertEqual(try manage(mgmt, ["command": "list"]).exports?.map(\.id), ["keep", "byhand", "new"])
        stop(d)
    }

    func testSigtermDrainsAndLeavesNoSocket() throws {
        let img = try image()
        let cfg = try write("[daemon]\nmanagement-socket = \"\(path("m.sock"))\"\nmetrics = \"\(path("metrics.sock"))\"\n"
                            + exportTable("a", img) + exportTable("b", img), to: "v.toml")
        let d = try launch(["--config", cfg])
        guard waitLog(d) else { return }
        let c = try BlkTestClient(socket: path("a.sock"))
        XCTAssertEqual(try c.write(sector: 2, data: payload(512, seed: 5)), 0)
        for s in ["a.sock", "b.sock", "m.sock", "metrics.sock"] { XCTAssertTrue(isSocket(path(s)), s) }
        stop(d)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".sock") || $0.hasPrefix(".vd") }, [])
        XCTAssertTrue(c.frontend.backendClosed())
    }

    func testReadyIsNotifiedOnceEveryExportListens() throws {
        let img = try image()
        // A test listener on NOTIFY_SOCKET, as systemd has.
        let notify = path("notify")
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(fd) }
        var a = sockaddr_un()
        a.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &a.sun_path) { p in
            for (i, b) in notify.utf8.enumerated() { p[i] = b }
        }
        let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        XCTAssertEqual(rc, 0)
        var env = ProcessInfo.processInfo.environment
        env["NOTIFY_SOCKET"] = notify
        let d = try launch(["--export", blk("a", img, path("a.sock")), "--export", blk("b", img, path("b.sock"))], environment: env)
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        XCTAssertEqual(poll(&p, 1, 30_000), 1, "no notification; stderr:\n\(d.err())")
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = recv(fd, &buf, buf.count, 0)
        let message = String(decoding: buf[0..<max(n, 0)], as: UTF8.self)
        XCTAssertTrue(message.split(separator: "\n").contains("READY=1"), message)
        XCTAssertTrue(message.contains("MAINPID=\(d.pid)"), message)
        // When READY=1 arrived, every export was already listening.
        XCTAssertTrue(isSocket(path("a.sock")) && isSocket(path("b.sock")))
        XCTAssertEqual(try BlkTestClient(socket: path("b.sock")).read(sector: 3, count: 512).1, imageBytes(3 * 512, 512))
        kill(d.pid, SIGTERM)
        XCTAssertEqual(poll(&p, 1, 30_000), 1)
        let n2 = recv(fd, &buf, buf.count, 0)
        XCTAssertEqual(String(decoding: buf[0..<max(n2, 0)], as: UTF8.self), "STOPPING=1")
        XCTAssertEqual(waitExit(d), 0)
    }

    func testContribConfigsCheckAndTheUnitVerifies() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("contrib").path
        let example = try run(["--check-config", "\(root)/vdevd.example.toml"])
        XCTAssertEqual(example.status, 0, example.stderr)
        XCTAssertEqual(example.stdout, "\(root)/vdevd.example.toml: OK: 2 export(s) (vm1-root, vm1-vsock), 2 poller(s), management socket /run/vdevd/vdevd.sock, metrics on 127.0.0.1:9464\n")
        let demo = try run(["--check-config", "\(root)/demo.toml"])
        XCTAssertEqual(demo.status, 0, demo.stderr)
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze") else { return }
        // The unit as installed, with the binaries where this build has them.
        let bin = URL(fileURLWithPath: try XCTUnwrap(Self.binary("vdevd"))).deletingLastPathComponent().path
        let unit = try String(contentsOfFile: "\(root)/vdevd.service", encoding: .utf8)
            .replacingOccurrences(of: "/usr/local/bin/", with: bin + "/")
        let file = try write(unit, to: "vdevd.service")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/systemd-analyze")
        p.arguments = ["verify", file]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(p.terminationStatus, 0, text)
        XCTAssertFalse(text.contains("vdevd.service"), text)
    }

    func testJSONLogLinesCarryTheExportID() throws {
        let img = try image(), mgmt = path("m.sock")
        let d = try launch(["--log-format", "json", "--management-socket", mgmt, "--export", blk("j0", img, path("j0.sock"))])
        guard waitLog(d, "vdevd ready") else { return }
        XCTAssertTrue(try manage(mgmt, ["command": "remove", "id": "j0"]).ok)
        stop(d)
        let lines = d.err().split(separator: "\n")
        XCTAssertGreaterThan(lines.count, 4)
        var aboutExport = 0
        for line in lines {
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String]
            XCTAssertNotNil(object, String(line))
            guard let o = object else { continue }
            XCTAssertNotNil(o["level"])
            XCTAssertNotNil(o["time"])
            let message = o["message"] ?? ""
            if message.hasPrefix("listening on") || message.hasPrefix("queue 0 totals") || message == "export removed" {
                XCTAssertEqual(o["export"], "j0", String(line))
                aboutExport += 1
            }
        }
        XCTAssertEqual(aboutExport, 3, d.err())
    }
}
