#if canImport(Glibc)
import Glibc
#endif
import Exports
import Foundation
import Logging
import Net
import VhostUserTestSupport
import Virtio
import XCTest

/// A net export served in-process, plugged into a switch.
struct NetServed {
    let export: VhostUserExport
    let socket: String
    var device: NetDevice { export.device as! NetDevice }
    func counter(_ c: PortCounters.Counter) -> UInt64 { device.port.counters.get(c) }
}

class NetTestCase: XCTestCase {
    var dir: String!
    var pollers: PollerGroup?
    var exports: [Export] = []
    var drivers: [NetTestDriver] = []
    let logs = LogStore()

    override func setUpWithError() throws {
        try super.setUpWithError()
        signal(SIGPIPE, SIG_IGN)
        dir = try makeTemporaryDirectory("/tmp/vnet-")
        // Ports on different pollers: the switch must move frames between threads.
        pollers = try PollerGroup(count: 2)
    }

    override func tearDown() {
        drivers.removeAll()
        for e in exports.reversed() { e.stop() }
        exports.removeAll()
        pollers?.stopAll()
        pollers = nil
        if let dir { try? FileManager.default.removeItem(atPath: dir) }
        if let run = testRun, run.totalFailureCount > 0 {
            print("---- export log of \(name) ----")
            for l in logs.all.suffix(300) { print(l) }
        }
        super.tearDown()
    }

    var logger: Logger {
        let store = logs
        return Logger(label: "vdevd-net-test") { _ in CaptureLogHandler(store: store) }
    }

    /// A switch name no other test uses (the registry is process-wide).
    func makeSwitch(_ tag: String = "sw") -> String {
        let name = "\(tag)\(UInt32.random(in: 0...UInt32.max))"
        _ = try? SwitchFactory.make(SwitchSpec(id: name))
        return name
    }

    /// Serves a net export through ExportSpec.parse + ExportFactory.make; `options` is appended to the spec.
    func serve(_ id: String, switch sw: String, options: String = "") throws -> NetServed {
        let sock = "\(dir!)/\(id).sock"
        var text = "vhost-user-net,id=\(id),socket=\(sock),switch=\(sw)"
        if !options.isEmpty { text += "," + options }
        let e = try ExportFactory.make(try ExportSpec.parse(text), pollers: pollers!, logger: logger)
        e.start()
        exports.append(e)
        return NetServed(export: e as! VhostUserExport, socket: sock)
    }

    func guest(_ s: NetServed, features: UInt64 = NetTestDriver.fMrgRxbuf, pairs: Int = 1,
               extraProtocolFeatures: UInt64 = 0) throws -> NetTestDriver {
        let d = try NetTestDriver(socket: s.socket, features: features, pairs: pairs, extraProtocolFeatures: extraProtocolFeatures)
        drivers.append(d)
        return d
    }

    /// Waits for a counter to reach a value (a safety net for work another poller does, not a timing assertion).
    func eventually(_ timeout: Double = 20, _ cond: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if cond() { return true }
            usleep(500)
        }
        return cond()
    }
}

func mac(_ last: UInt8) -> [UInt8] { [0x52, 0x54, 0x00, 0x00, 0x00, last] }
let broadcast: [UInt8] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff]

/// Deterministic bytes (xorshift64): a misplaced byte changes the frame.
func pattern(_ n: Int, seed: UInt64) -> [UInt8] {
    var x = (seed &+ 1) &* 0x9E37_79B9_7F4A_7C15
    return (0..<n).map { _ in
        x ^= x << 13
        x ^= x >> 7
        x ^= x << 17
        return UInt8(truncatingIfNeeded: x >> 24)
    }
}
