import Exports
import Service
import XCTest

/// The config file: what a good one gives, and each kind of bad one with its exact message.
final class ConfigFileTests: XCTestCase {
    let good = """
    # vdevd.toml
    [daemon]
    pollers = 2
    cpus = [2, 3]
    poll-us = 20
    log-level = "debug"
    management-socket = "/run/x/m.sock"
    metrics = "127.0.0.1:9464"

    [[export]]
    type = "vhost-user-blk"
    id = "disk0"
    path = "/img/a"
    socket = "/run/a.sock"
    num-queues = 4
    readonly = true
    socket-mode = 0o660
    socket-owner = "0"
    socket-group = 0

    [[export]]
    type = "vhost-user-vsock"
    id = "vs0"
    guest-cid = 3
    socket = "/run/v.sock"
    uds-path = "/run/v.host"
    socket-mode = "0640"
    """

    func testGoodFileGivesSettingsAndExportsWithTheirLines() throws {
        let c = try ConfigFile.parse(good, file: "vdevd.toml")
        XCTAssertEqual(c.daemon.pollers, 2)
        XCTAssertEqual(c.daemon.cpus, [2, 3])
        XCTAssertEqual(c.daemon.pollUs, 20)
        XCTAssertEqual(c.daemon.logLevel, .debug)
        XCTAssertEqual(c.daemon.managementSocket, "/run/x/m.sock")
        XCTAssertEqual(c.daemon.metrics, .tcp(host: "127.0.0.1", port: 9464))
        XCTAssertEqual(c.exports.map(\.spec.id), ["disk0", "vs0"])
        let d = c.exports[0].spec
        XCTAssertEqual(d.kind, .vhostUserBlk)
        XCTAssertEqual(d.blk.path, "/img/a")
        XCTAssertEqual(d.socket, "/run/a.sock")
        XCTAssertEqual(d.blk.numQueues, 4)
        XCTAssertTrue(d.blk.readonly)
        XCTAssertEqual(d.socketMode, 0o660)
        XCTAssertEqual(d.socketOwner, 0)
        XCTAssertEqual(d.socketGroup, 0)
        XCTAssertEqual(c.exports[0].origin, .file("vdevd.toml", line: 10, index: 1))
        let v = c.exports[1].spec
        XCTAssertEqual(v.vsock?.guestCID, 3)
        XCTAssertEqual(v.socketMode, 0o640)
        XCTAssertEqual(v.vsock?.socketMode, 0o640)
        XCTAssertEqual(c.exports[1].origin, .file("vdevd.toml", line: 21, index: 2))
        // The same export on the command line parses to the same spec: one parser.
        let cli = try ExportSpec.parse("vhost-user-blk,id=disk0,path=/img/a,socket=/run/a.sock,num-queues=4,readonly=on,"
                                       + "socket-mode=0660,socket-owner=0,socket-group=0")
        XCTAssertEqual(cli, d)
    }

    func message(_ text: String) -> String {
        do {
            _ = try ConfigFile.parse(text, file: "f.toml")
            return "no error"
        } catch {
            return "\(error)"
        }
    }

    let export = "[[export]]\ntype = \"vhost-user-blk\"\nid = \"d0\"\npath = \"/i\"\nsocket = \"/s\"\n"

    func testEachBadFileHasItsExactMessage() {
        let cases: [(String, String)] = [
            ("[daemon]\npollers = 0\n",
             "f.toml:2: [daemon], key 'pollers': expected an integer in 1...64, got '0'"),
            ("[daemon]\npollers = \"two\"\n",
             "f.toml:2: [daemon], key 'pollers': expected an integer in 1...64, got 'two'"),
            ("[daemon]\n\ncolour = 1\n",
             "f.toml:3: [daemon], key 'colour': unknown key (known: pollers, cpus, io-workers, stop-timeout-ms, poll-us, log-level, log-format, management-socket, metrics)"),
            ("[daemon]\nlog-level = \"loud\"\n",
             "f.toml:2: [daemon], key 'log-level': unknown level 'loud' (trace, debug, info, notice, warning, error, critical)"),
            ("[daemon]\ncpus = [1, \"x\"]\n",
             "f.toml:2: [daemon], key 'cpus': expected CPU numbers, got a string"),
            ("[daemon]\nmetrics = \"localhost\"\n",
             "f.toml:2: [daemon], key 'metrics': expected HOST:PORT (an IP address and a port) or an absolute Unix socket path, got 'localhost'"),
            (export + "num-queues = 0\n",
             "f.toml:6: [[export]] #1 'd0', key 'num-queues': expected an integer in 1...64, got '0'"),
            (export + "\n[[export]]\ntype = \"vhost-user-blk\"\nid = \"d1\"\npath = \"/i\"\nsocket = \"/t\"\nreadonly = \"maybe\"\n",
             "f.toml:12: [[export]] #2 'd1', key 'readonly': expected on or off, got 'maybe'"),
            (export + "colour = \"blue\"\n",
             "f.toml:6: [[export]] #1 'd0', key 'colour': unknown key for vhost-user-blk (known: id, path, socket, num-queues, queue-size, readonly, direct, logical-block-size, write-cache, engine, inline-io, fixed-buffers, poller, socket-mode, socket-owner, socket-group, max-guest-memory)"),
            ("[[export]]\ntype = \"vhost-user-blk\"\nid = \"d0\"\npath = \"/i\"\n",
             "f.toml:1: [[export]] #1 'd0', key 'socket': required"),
            ("[[export]]\nid = \"d0\"\n",
             "f.toml:1: [[export]] #1 'd0', key 'type': required (\"vhost-user-blk\", \"vhost-user-vsock\", \"vhost-user-net\", \"vduse-blk\", \"vduse-net\")"),
            ("[[export]]\ntype = \"vhost-user-scsi\"\nid = \"d0\"\n",
             "f.toml:2: [[export]] #1 'd0', key 'type': unknown export type 'vhost-user-scsi' (known: vhost-user-blk, vhost-user-vsock, vhost-user-net, vduse-blk, vduse-net)"),
            (export + "socket-mode = 640\n",
             "f.toml:6: [[export]] #1 'd0', key 'socket-mode': 640 is not a permission mode: write \"0640\" or 0o640 (octal)"),
            (export + "socket-mode = \"0800\"\n",
             "f.toml:6: [[export]] #1 'd0', key 'socket-mode': expected octal permissions like 0660, got '0800'"),
            (export + "socket-owner = \"no-such-user-here\"\n",
             "f.toml:6: [[export]] #1 'd0', key 'socket-owner': no user 'no-such-user-here' (a user name or a uid)"),
            (export + "num-queues = 1.5\n",
             "f.toml:6: [[export]] #1 'd0', key 'num-queues': expected a string, an integer or a boolean, got a floating-point number"),
            ("[deamon]\npollers = 2\n",
             "f.toml:1: key 'deamon': unknown table (known: [daemon], [[export]], [[switch]])"),
            ("[[switch]]\nid = \"sw0\"\nuplink = \"eth0\"\n",
             "f.toml:3: [[switch]] #1 'sw0', key 'uplink': expected tap:IFNAME (1-15 characters), got 'eth0'"),
            ("[[switch]]\nid = \"sw0\"\nports = 4\n",
             "f.toml:3: [[switch]] #1 'sw0', key 'ports': unknown key (known: id, uplink)"),
            ("daemon = 3\n",
             "f.toml:1: key 'daemon': expected a [daemon] table"),
            ("[daemon]\npollers = \n",
             "f.toml:2: not valid TOML: Value is missing after key/value pair separator ('=')"),
        ]
        for (text, expected) in cases {
            let got = message(text)
            if got.hasPrefix("f.toml:2: not valid TOML") {
                // The syntax error's wording is the TOML library's; file and line are ours.
                XCTAssertTrue(expected.hasPrefix("f.toml:2: not valid TOML"), "\(text)\n=> \(got)")
                continue
            }
            XCTAssertEqual(got, expected, text)
        }
    }

    /// Switches for net exports, as `--switch` gives them.
    func testSwitchTablesAndTheNetExportsOnThem() throws {
        let c = try ConfigFile.parse("""
        [[switch]]
        id = "sw0"
        uplink = "tap:vdtap0"

        [[switch]]
        id = "sw1"

        [[export]]
        type = "vhost-user-net"
        id = "nic0"
        socket = "/run/nic0.sock"
        switch = "sw1"
        mac = "52:54:00:00:00:01"
        """, file: "f.toml")
        XCTAssertEqual(c.switches, [SwitchSpec(id: "sw0", uplinkTap: "vdtap0"), SwitchSpec(id: "sw1")])
        XCTAssertEqual(c.exports.map(\.spec.net?.switchName), ["sw1"])
        XCTAssertNoThrow(try SwitchSpec.validate(c.switches, exports: c.exports.map(\.spec)))
    }

    func testLinesSkipMultilineStringsAndCountArrayTables() {
        let text = """
        [daemon]
        log-level = "info"
        note = \"\"\"
        [[export]]
        num-queues = 9
        \"\"\"
        """
        // `note` is unknown, and the fake table inside the string does not count.
        XCTAssertEqual(message(text), "f.toml:3: [daemon], key 'note': unknown key (known: pollers, cpus, io-workers, stop-timeout-ms, poll-us, log-level, log-format, management-socket, metrics)")
    }

    func testCommandLineAndFileExportsCombineAndDuplicatesNameBothPlaces() throws {
        let c = try ConfigFile.parse(good, file: "vdevd.toml")
        let cli = ExportEntry(spec: try ExportSpec.parse("vhost-user-blk,id=d9,path=/i,socket=/run/z.sock"), origin: .commandLine(1))
        XCTAssertNoThrow(try ExportEntry.validate([cli] + c.exports))
        let sameID = ExportEntry(spec: try ExportSpec.parse("vhost-user-blk,id=disk0,path=/i,socket=/run/z.sock"), origin: .commandLine(1))
        XCTAssertThrowsError(try ExportEntry.validate([sameID] + c.exports)) {
            XCTAssertEqual("\($0)", "vdevd.toml:10: [[export]] #1 'disk0', key 'id': 'disk0' is already used (--export #1)")
        }
        let sameSocket = ExportEntry(spec: try ExportSpec.parse("vhost-user-blk,id=d9,path=/i,socket=/run/v.sock"), origin: .commandLine(2))
        XCTAssertThrowsError(try ExportEntry.validate(c.exports + [sameSocket])) {
            XCTAssertEqual("\($0)", "--export #2 'd9', key 'socket': /run/v.sock is already used (vdevd.toml:21: [[export]] #2)")
        }
    }

    func testDaemonFlagsOverrideTheFile() throws {
        let c = try ConfigFile.parse(good, file: "vdevd.toml")
        var flags = DaemonSettings()
        try flags.set("pollers", "3")
        let s = c.daemon.overridden(by: flags)
        XCTAssertEqual(s.pollers, 3)
        XCTAssertEqual(s.cpus, [2, 3])
        XCTAssertEqual(s.managementSocketPath(byDefault: true), "/run/x/m.sock")
        XCTAssertEqual(DaemonSettings().managementSocketPath(byDefault: true), DaemonSettings.defaultManagementSocket)
        XCTAssertNil(DaemonSettings().managementSocketPath(byDefault: false))
        try flags.set("management-socket", "none")
        XCTAssertNil(c.daemon.overridden(by: flags).managementSocketPath(byDefault: true))
    }
}
