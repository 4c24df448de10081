import Exports
import Net
import XCTest

/// `--export vhost-user-net,...` and `--switch ...`: every bad value is refused naming the export (or switch) and key.
final class NetSpecTests: XCTestCase {
    func testEveryKeyParses() throws {
        let s = try ExportSpec.parse("vhost-user-net,id=n0,socket=/tmp/n0.sock,switch=sw,mac=52:54:00:aB:cd:01,num-queues=4,mtu=9000,vlan=42,queue-size=1024")
        XCTAssertEqual(s.kind, .vhostUserNet)
        let o = try XCTUnwrap(s.net)
        XCTAssertEqual(o.switchName, "sw")
        XCTAssertEqual(o.mac, MACAddress("52:54:00:ab:cd:01"))
        XCTAssertEqual(o.mac?.description, "52:54:00:ab:cd:01")
        XCTAssertEqual(o.queuePairs, 4)
        XCTAssertEqual(o.mtu, 9000)
        XCTAssertEqual(o.vlan, 42)
        XCTAssertEqual(o.queueSize, 1024)
        let d = try ExportSpec.parse("vhost-user-net,id=n1,socket=/tmp/n1.sock,switch=sw").net!
        XCTAssertNil(d.mac)
        XCTAssertEqual(d.queuePairs, 1)
        XCTAssertEqual(d.mtu, 1500)
        XCTAssertEqual(d.vlan, 0)
    }

    func error(_ text: String) -> ExportSpecError? {
        do { _ = try ExportSpec.parse(text); return nil } catch { return error as? ExportSpecError }
    }

    func testBadValuesNameTheExportAndKey() {
        let base = "vhost-user-net,id=n0,socket=/tmp/n0.sock"
        let cases: [(String, String)] = [
            (base, "switch"),
            (base + ",switch=", "switch"),
            (base + ",switch=sw,mac=52:54:00:00:00", "mac"),
            (base + ",switch=sw,mac=01:00:5e:00:00:01", "mac"),
            (base + ",switch=sw,mac=00:00:00:00:00:00", "mac"),
            (base + ",switch=sw,num-queues=0", "num-queues"),
            (base + ",switch=sw,num-queues=17", "num-queues"),
            (base + ",switch=sw,mtu=67", "mtu"),
            (base + ",switch=sw,vlan=4095", "vlan"),
            (base + ",switch=sw,vlan=0", "vlan"),
            (base + ",switch=sw,queue-size=300", "queue-size"),
            (base + ",switch=sw,colour=blue", "colour"),
        ]
        for (text, key) in cases {
            let e = error(text)
            XCTAssertEqual(e?.export, "n0", text)
            XCTAssertEqual(e?.key, key, text)
        }
    }

    func testUnknownSwitchIsRefusedNamingTheKey() throws {
        let n = try ExportSpec.parse("vhost-user-net,id=n0,socket=/tmp/n0.sock,switch=nope")
        XCTAssertThrowsError(try SwitchSpec.validate([SwitchSpec(id: "sw0")], exports: [n])) { e in
            let err = e as? ExportSpecError
            XCTAssertEqual(err?.export, "n0")
            XCTAssertEqual(err?.key, "switch")
            XCTAssertEqual(err?.description, "export 'n0', key 'switch': no switch 'nope' (known: sw0)")
        }
        XCTAssertThrowsError(try SwitchSpec.validate([], exports: [n])) { e in
            XCTAssertTrue("\(e)".contains("no --switch was given"), "\(e)")
        }
        XCTAssertNoThrow(try SwitchSpec.validate([SwitchSpec(id: "nope")], exports: [n]))
    }

    func testSwitchSpec() throws {
        XCTAssertEqual(try SwitchSpec.parse("id=sw0"), SwitchSpec(id: "sw0"))
        XCTAssertEqual(try SwitchSpec.parse("id=sw0,uplink=tap:vdevtap0"), SwitchSpec(id: "sw0", uplinkTap: "vdevtap0"))
        func err(_ t: String) -> SwitchSpecError? {
            do { _ = try SwitchSpec.parse(t); return nil } catch { return error as? SwitchSpecError }
        }
        XCTAssertEqual(err("uplink=tap:x")?.key, "id")
        XCTAssertEqual(err("id=sw0,uplink=eth0")?.key, "uplink")
        XCTAssertEqual(err("id=sw0,uplink=tap:")?.key, "uplink")
        XCTAssertEqual(err("id=sw0,uplink=tap:abcdefghijklmnop")?.key, "uplink")
        XCTAssertEqual(err("id=sw0,speed=10")?.key, "speed")
        XCTAssertEqual(err("id=sw0,speed=10")?.switchID, "sw0")
        XCTAssertThrowsError(try SwitchSpec.validate([SwitchSpec(id: "a"), SwitchSpec(id: "a")], exports: []))
        XCTAssertThrowsError(try SwitchSpec.validate([SwitchSpec(id: "a", uplinkTap: "t"), SwitchSpec(id: "b", uplinkTap: "t")], exports: []))
    }

    /// The binary: a net export without a known switch exits 2 and names the key.
    func testDaemonExitsTwoNamingTheKey() throws {
        guard let bin = NetSpecTests.binary else { throw XCTSkip("vdevd binary not built") }
        for (args, want) in [
            (["--export", "vhost-user-net,id=n0,socket=/tmp/vnet-cli.sock"], "export 'n0', key 'switch': required"),
            (["--switch", "id=a", "--export", "vhost-user-net,id=n0,socket=/tmp/vnet-cli.sock,switch=b"], "export 'n0', key 'switch': no switch 'b'"),
            (["--switch", "id=a,uplink=veth0", "--export", "vhost-user-net,id=n0,socket=/tmp/vnet-cli.sock,switch=a"], "switch 'a', key 'uplink'"),
        ] {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: bin)
            p.arguments = args
            let err = Pipe()
            p.standardError = err
            try p.run()
            p.waitUntilExit()
            let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            XCTAssertEqual(p.terminationStatus, 2, text)
            XCTAssertTrue(text.contains(want), text)
        }
    }

    /// A tap that cannot be opened (an interface that is not a tap) stops the daemon before it serves anything.
    func testUplinkThatCannotBeOpenedIsReported() throws {
        guard let bin = NetSpecTests.binary else { throw XCTSkip("vdevd binary not built") }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: bin)
        p.arguments = ["--switch", "id=s,uplink=tap:lo", "--export", "vhost-user-net,id=n0,socket=/tmp/vnet-cli2.sock,switch=s"]
        let err = Pipe()
        p.standardError = err
        try p.run()
        p.waitUntilExit()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(p.terminationStatus, 1, text)
        XCTAssertTrue(text.contains("switch 's', key 'uplink': cannot open tap lo"), text)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "/tmp/vnet-cli2.sock"), "no export was started")
    }

    static var binary: String? {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        var candidates: [String] = []
        if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            var u = URL(fileURLWithPath: exe).deletingLastPathComponent()
            for _ in 0..<4 {
                candidates.append(u.appendingPathComponent("vdevd").path)
                u = u.deletingLastPathComponent()
            }
        }
        candidates.append(root.appendingPathComponent(".build/debug/vdevd").path)
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }
}
