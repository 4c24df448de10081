#if canImport(Glibc)
import Glibc
#endif
import Exports
import Foundation
import Service
import VhostUserTestSupport
import Virtio
import XCTest

/// Verified I/O on one export from a background thread, until told to stop: each round writes a sector
/// pattern and reads it back.
final class BackgroundIO {
    private let lock = NSLock()
    private var stopAsked = false
    private(set) var rounds = 0
    private(set) var failures: [String] = []
    private var thread: Thread?
    private let started = DispatchSemaphore(value: 0)
    private let done = DispatchSemaphore(value: 0)

    init(_ client: BlkTestClient) {
        thread = Thread { [self] in
            var i = 0
            while true {
                let stop = lock.withLock { stopAsked }
                if stop && i >= 20 { break }
                let data = payload(4096, seed: UInt8(truncatingIfNeeded: i))
                let sector = UInt64(i % 64) * 8
                do {
                    let w = try client.write(sector: sector, data: data)
                    let (r, back) = try client.read(sector: sector, count: 4096)
                    if w != 0 || r != 0 || back != data { lock.withLock { failures.append("round \(i): status \(w)/\(r), data \(back == data)") } }
                } catch {
                    lock.withLock { failures.append("round \(i): \(error)") }
                    break
                }
                i += 1
                lock.withLock { rounds = i }
                if i == 1 { started.signal() }
            }
            done.signal()
        }
        thread!.start()
        started.wait()
    }

    /// Stops after the current round; the rounds done and the failures seen.
    func finish() -> (rounds: Int, failures: [String]) {
        lock.withLock { stopAsked = true }
        done.wait()
        return lock.withLock { (rounds, failures) }
    }
}

/// The management socket and vdevctl against a running daemon.
final class ManagementTests: ServiceTestCase {
    func testAddStatsAndRemoveWhileAnotherExportServesVerifiedIO() throws {
        let imgA = try image("a.img"), imgB = try image("b.img")
        let sa = path("a.sock"), sb = path("b.sock"), mgmt = path("m.sock")
        let d = try launch(["--pollers", "2", "--management-socket", mgmt, "--export", blk("a", imgA, sa)])
        guard waitLog(d) else { return }
        XCTAssertEqual(fileStat(mgmt).map { $0.st_mode & 0o777 }, 0o600)
        let io = BackgroundIO(try BlkTestClient(socket: sa))

        // Add b with vdevctl (a --socket before the subcommand, as operators type it).
        let add = try run("vdevctl", ["--socket", mgmt, "add", "--export", blk("b", imgB, sb, "num-queues=2")])
        XCTAssertEqual(add.status, 0, add.stderr)
        XCTAssertTrue(isSocket(sb))
        let b = try BlkTestClient(socket: sb, queueCount: 2)
        let k = 10
        for i in 0..<k {
            XCTAssertEqual(try b.write(sector: UInt64(i) * 8, data: payload(4096, seed: UInt8(100 + i)), queue: i % 2), 0)
        }
        for i in 0..<k {
            let (st, data) = try b.read(sector: UInt64(i) * 8, count: 4096, queue: 1)
            XCTAssertEqual(st, 0)
            XCTAssertEqual(data, payload(4096, seed: UInt8(100 + i)))
        }
        XCTAssertEqual(try b.read(sector: 1000, count: 512).1, imageBytes(1000 * 512, 512))

        // Stats count exactly what this test did on b: 10 writes (5 per queue), 11 reads on queue 1 and 0.
        let r = try manage(mgmt, ["command": "stats", "id": "b"])
        XCTAssertTrue(r.ok, r.error ?? "")
        let s = try XCTUnwrap(r.stats?.exports.first)
        XCTAssertEqual(r.stats?.exports.count, 1)
        XCTAssertEqual(s.id, "b")
        XCTAssertTrue(s.connected)
        XCTAssertEqual(s.queues.map { $0.counters["requests"] }, [6, 15])
        XCTAssertEqual(s.total("writtenBytes"), UInt64(k * 4096))
        XCTAssertEqual(s.total("readBytes"), UInt64(k * 4096 + 512))
        XCTAssertEqual(s.total("errors"), 0)
        XCTAssertEqual(s.queues.filter { $0.poller != nil }.count, 2)
        // Each poller knows which exports it serves.
        let pollers = try XCTUnwrap(r.stats?.pollers)
        XCTAssertEqual(pollers.count, 2)
        XCTAssertTrue(pollers.contains { $0.exports.contains("b") })
        XCTAssertTrue(pollers.contains { $0.exports.contains("a") })
        XCTAssertGreaterThan(pollers.map(\.busyMicros).reduce(0, +), 0)

        // The same through vdevctl stats --json and the table.
        let js = try run("vdevctl", ["stats", "b", "--json", "--socket", mgmt])
        XCTAssertEqual(js.status, 0, js.stderr)
        let decoded = try JSONDecoder().decode(StatsReport.self, from: Data(js.stdout.utf8))
        XCTAssertEqual(decoded.exports.first?.total("writtenBytes"), UInt64(k * 4096))
        let table = try run("vdevctl", ["stats", "--socket", mgmt])
        XCTAssertEqual(table.status, 0, table.stderr)
        let rowB1 = table.stdout.split(separator: "\n").first { $0.hasPrefix("b ") && $0.split(separator: " ")[1] == "1" }
        XCTAssertEqual(rowB1.map { $0.split(separator: " ").map(String.init)[3] }, "15", table.stdout)

        // Remove b while its frontend is connected: it is disconnected and its socket removed.
        let rm = try run("vdevctl", ["remove", "b", "--socket", mgmt])
        XCTAssertEqual(rm.status, 0, rm.stderr)
        XCTAssertNil(fileStat(sb))
        XCTAssertTrue(b.frontend.backendClosed())
        // What b's guest wrote is in its image.
        let fd = open(imgB, O_RDONLY)
        var buf = [UInt8](repeating: 0, count: 4096)
        XCTAssertEqual(pread(fd, &buf, 4096, 9 * 4096), 4096)
        close(fd)
        XCTAssertEqual(buf, payload(4096, seed: 109))

        let list = try run("vdevctl", ["list", "--json", "--socket", mgmt])
        XCTAssertEqual(list.status, 0, list.stderr)
        let listed = try JSONDecoder().decode([ManagementReply.Listed].self, from: Data(list.stdout.utf8))
        XCTAssertEqual(listed.map(\.id), ["a"])
        XCTAssertEqual(listed.first?.origin, "--export #1")

        // a served every request meanwhile without an error, and its counters say exactly how many.
        let (rounds, failures) = io.finish()
        XCTAssertEqual(failures, [])
        let sa2 = try XCTUnwrap(manage(mgmt, ["command": "stats", "id": "a"]).stats?.exports.first)
        XCTAssertEqual(sa2.total("requests"), UInt64(2 * rounds))
        XCTAssertEqual(sa2.total("writtenBytes"), UInt64(rounds * 4096))
        stop(d)
        XCTAssertNil(fileStat(mgmt))
    }

    func testBadRequestsGetErrorsAndTheConnectionStaysUsable() throws {
        let img = try image(), mgmt = path("m.sock")
        let d = try launch(["--management-socket", mgmt])
        guard waitLog(d) else { return }
        let c = try ManagementClient(path: mgmt)
        XCTAssertEqual(try c.send(Array("not json".utf8)).error, "expected a JSON object like {\"command\":\"list\"}")
        XCTAssertEqual(try c.request(["command": "reboot"]).error, "unknown command 'reboot' (list, add, remove, stats, metrics)")
        XCTAssertEqual(try c.request(["command": "remove", "id": "ghost"]).error, "no export 'ghost'")
        XCTAssertEqual(try c.request(["command": "stats", "id": "ghost"]).error, "no export 'ghost'")
        XCTAssertEqual(try c.request(["command": "add", "export": blk("x", img, path("x.sock"), "num-queues=99")]).error,
                       "export 'x', key 'num-queues': expected an integer in 1...64, got '99'")
        // An object with typed values goes through the same parser.
        let obj = #"{"command":"add","export":{"type":"vhost-user-blk","id":"y","path":"\#(img)","socket":"\#(path("y.sock"))","num-queues":2,"readonly":true,"socket-mode":416}}"#
        let added = try c.send(Array(obj.utf8))
        XCTAssertTrue(added.ok, added.error ?? "")
        XCTAssertEqual(fileStat(path("y.sock")).map { $0.st_mode & 0o777 }, 0o640)
        let dup = try c.request(["command": "add", "export": blk("z", img, path("y.sock"))])
        XCTAssertEqual(dup.error, "management add 'z', key 'socket': \(path("y.sock")) is already used (management add)")
        let list = try c.request(["command": "list"])
        XCTAssertEqual(list.exports?.map(\.id), ["y"])
        // vdevctl reports a refused add with status 1 and the daemon's words.
        let r = try run("vdevctl", ["add", "--socket", mgmt, "--export", "vhost-user-blk,id=q"])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderr, "vdevctl: export 'q', key 'path': required\n")
        stop(d)
        XCTAssertNil(fileStat(path("y.sock")))
    }

    func testVdevctlWithoutADaemonSaysSo() throws {
        let r = try run("vdevctl", ["list", "--socket", path("none.sock")])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("cannot connect to \(path("none.sock"))"), r.stderr)
        XCTAssertEqual(try run("vdevctl", ["frobnicate"]).status, 2)
    }
}
