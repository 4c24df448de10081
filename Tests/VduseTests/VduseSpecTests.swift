#if canImport(Glibc)
import Glibc
#endif
import Exports
import Net
import Logging
import VhostUserTestSupport
import Virtio
import XCTest

/// `--export vduse-blk,...`: the device keys of blk that VDUSE can carry, the name, and clear refusals.
final class VduseSpecTests: XCTestCase {
    func error(_ text: String) -> ExportSpecError? {
        do {
            _ = try ExportSpec.parse(text)
            return nil
        } catch let e as ExportSpecError {
            return e
        } catch {
            XCTFail("unexpected \(error)")
            return nil
        }
    }

    func testVduseBlkTakesBlkKeysAndAName() throws {
        let s = try ExportSpec.parse("vduse-blk,id=v0,name=vdisk0,path=/img,num-queues=2,queue-size=128,readonly=on,poller=1")
        XCTAssertEqual(s.kind, .vduseBlk)
        XCTAssertEqual(s.kind.device, .blk)
        XCTAssertEqual(s.transport, .vduse(name: "vdisk0"))
        XCTAssertEqual(s.endpoint, "/dev/vduse/vdisk0")
        XCTAssertEqual(s.blk.path, "/img")
        XCTAssertEqual(s.blk.numQueues, 2)
        XCTAssertEqual(s.blk.queueSize, 128)
        XCTAssertTrue(s.blk.readonly)
        XCTAssertEqual(s.poller, 1)
    }

    func testNameIsRequiredAndChecked() {
        XCTAssertEqual(error("vduse-blk,id=v0,path=/img")?.key, "name")
        for bad in ["a/b", "control", ".x", "a b", String(repeating: "n", count: 64)] {
            let e = error("vduse-blk,id=v0,path=/img,name=\(bad)")
            XCTAssertEqual(e?.key, "name", bad)
        }
    }

    func testKeysVduseCannotCarryAreRefusedWithTheReason() {
        let wce = error("vduse-blk,id=v0,name=v,path=/img,write-cache=off")
        XCTAssertEqual(wce?.key, "write-cache")
        XCTAssertTrue(wce?.message.contains("read-only") ?? false, wce?.message ?? "")
        for k in ["socket=/s", "socket-mode=0600", "socket-owner=0", "socket-group=0"] {
            let e = error("vduse-blk,id=v0,name=v,path=/img,\(k)")
            XCTAssertEqual(e?.key, String(k.prefix(while: { $0 != "=" })))
            XCTAssertTrue(e?.message.contains("has no socket") ?? false, e?.message ?? "")
        }
        XCTAssertEqual(error("vduse-blk,id=v0,name=v,path=/img,fixed-buffers=auto")?.key, "fixed-buffers")
    }

    func testTwoExportsCannotShareAName() throws {
        let a = try ExportSpec.parse("vduse-blk,id=a,name=same,path=/a")
        let b = try ExportSpec.parse("vduse-blk,id=b,name=same,path=/b")
        XCTAssertThrowsError(try ExportSpec.validate([a, b])) { e in
            XCTAssertEqual((e as? ExportSpecError)?.key, "name")
        }
    }

    func testHelpListsVduseBlk() {
        XCTAssertTrue(ExportSpec.helpText.contains("vduse-blk:"))
        XCTAssertTrue(ExportSpec.helpText.contains("  name (required)"))
    }

    func testMissingVduseIsAClearError() throws {
        if access("/dev/vduse/control", F_OK) == 0 { throw XCTSkip("this kernel has VDUSE") }
        let dir = try makeTemporaryDirectory("/tmp/vdevd-vduse-")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let img = "\(dir)/d.img"
        XCTAssertTrue(FileManager.default.createFile(atPath: img, contents: Data(count: 1 << 20)))
        let pollers = try PollerGroup(count: 1)
        defer { pollers.stopAll() }
        let spec = try ExportSpec.parse("vduse-blk,id=v0,name=v0,path=\(img)")
        XCTAssertThrowsError(try ExportFactory.make(spec, pollers: pollers, logger: Logger(label: "t"))) { e in
            XCTAssertEqual("\(e)", "export v0: /dev/vduse/control does not exist: this kernel has no VDUSE (modprobe vduse; it needs vdpa and vhost_iotlb)")
        }
    }
}

/// `--export vduse-net,...`: a port on an in-daemon switch, reached through VDUSE.
final class VduseNetSpecTests: XCTestCase {
    func testVduseNetTakesNetKeysAndAName() throws {
        let s = try ExportSpec.parse("vduse-net,id=h0,name=vn0,switch=sw0,mac=52:54:00:00:00:09,vlan=5,mtu=9000")
        XCTAssertEqual(s.kind, .vduseNet)
        XCTAssertEqual(s.kind.device, .net)
        XCTAssertEqual(s.transport, .vduse(name: "vn0"))
        XCTAssertEqual(s.net?.switchName, "sw0")
        XCTAssertEqual(s.net?.vlan, 5)
        XCTAssertEqual(s.net?.mtu, 9000)
        XCTAssertEqual(s.net?.queuePairs, 1)
    }

    func testMoreThanOneQueuePairIsRefusedWithTheReason() {
        do {
            _ = try ExportSpec.parse("vduse-net,id=h0,name=vn0,switch=sw0,num-queues=2")
            XCTFail("accepted")
        } catch let e as ExportSpecError {
            XCTAssertEqual(e.key, "num-queues")
            XCTAssertTrue(e.message.contains("control queue"), e.message)
        } catch {
            XCTFail("\(error)")
        }
    }
}

/// What a vduse-net device offers: the net device's bits less MQ (it needs the control queue VDUSE refuses), plus
/// MAC when the export has one, ACCESS_PLATFORM and VERSION_1; never CTRL_VQ.
final class VduseNetFeatureTests: XCTestCase {
    func testOfferedFeatures() throws {
        let sw = SwitchRegistry.shared.switchNamed("vduse-feature-test")
        var o = NetOptions(id: "h0", switchName: "vduse-feature-test")
        o.mac = MACAddress("52:54:00:00:00:09")
        let device = NetDevice(options: o, switch: sw)
        defer { device.detachFromSwitch() }
        let f = VduseExport.offeredFeatures(device, refused: NetFeature.mq, extra: NetFeature.mac)
        XCTAssertEqual(f, (NetDevice.features & ~NetFeature.mq) | NetFeature.mac | VirtioFeature.accessPlatform)
        XCTAssertEqual(f & NetFeature.ctrlVq, 0)
        XCTAssertEqual(device.readConfig(offset: 0, count: 6), [0x52, 0x54, 0, 0, 0, 9])
    }
}
