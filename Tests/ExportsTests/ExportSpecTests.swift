import Blk
import Exports
import XCTest

/// `TYPE,key=value,...` as the operator writes it.
final class ExportSpecTests: XCTestCase {
    func testDefaultsAndEveryKey() throws {
        let d = try ExportSpec.parse("vhost-user-blk,id=d0,path=/img,socket=/s")
        XCTAssertEqual(d.kind, .vhostUserBlk)
        XCTAssertEqual(d.id, "d0")
        XCTAssertEqual(d.blk.path, "/img")
        XCTAssertEqual(d.socket, "/s")
        XCTAssertEqual(d.blk.numQueues, 1)
        XCTAssertEqual(d.blk.queueSize, 256)
        XCTAssertFalse(d.blk.readonly)
        XCTAssertFalse(d.blk.direct)
        XCTAssertTrue(d.blk.writeCache)
        XCTAssertEqual(d.blk.logicalBlockSize, 512)
        XCTAssertEqual(d.socketMode, 0o600)
        XCTAssertNil(d.poller)

        let s = try ExportSpec.parse("vhost-user-blk,id=d1,path=/img,socket=/s,num-queues=4,queue-size=1024,"
                                     + "readonly=on,direct=yes,logical-block-size=4096,write-cache=off,"
                                     + "socket-mode=0600,poller=3")
        XCTAssertEqual(s.blk.numQueues, 4)
        XCTAssertEqual(s.blk.queueSize, 1024)
        XCTAssertTrue(s.blk.readonly)
        XCTAssertTrue(s.blk.direct)
        XCTAssertEqual(s.blk.logicalBlockSize, 4096)
        XCTAssertFalse(s.blk.writeCache)
        XCTAssertEqual(s.socketMode, 0o600)
        XCTAssertEqual(s.poller, 3)
    }

    func testDoubledCommaIsALiteralComma() throws {
        let s = try ExportSpec.parse("vhost-user-blk,id=d0,path=/images/a,,b.img,socket=/run/x,,y.sock")
        XCTAssertEqual(s.blk.path, "/images/a,b.img")
        XCTAssertEqual(s.socket, "/run/x,y.sock")
    }

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

    func testErrorsNameTheExportAndKey() {
        let base = "vhost-user-blk,id=d0,path=/i,socket=/s"
        for (extra, key) in [("num-queues=abc", "num-queues"), ("num-queues=0", "num-queues"), ("num-queues=65", "num-queues"),
                             ("queue-size=96", "queue-size"), ("queue-size=32", "queue-size"), ("readonly=2", "readonly"),
                             ("logical-block-size=1024", "logical-block-size"), ("socket-mode=0800", "socket-mode"),
                             ("socket-mode=1777", "socket-mode"), ("poller=-1", "poller"), ("bogus=1", "bogus"),
                             ("num-queues=1,num-queues=2", "num-queues")] {
            let e = error(base + "," + extra)
            XCTAssertEqual(e?.key, key, extra)
            XCTAssertTrue(e.map { "\($0)".contains(key) } ?? false, extra)
            if extra != "num-queues=1,num-queues=2" {
                XCTAssertEqual(e?.export, "d0", extra)
                XCTAssertTrue(e.map { "\($0)".contains("d0") } ?? false, extra)
            }
        }
        XCTAssertEqual(error("vhost-user-blk,id=d0,path=/i")?.key, "socket")
        XCTAssertEqual(error("vhost-user-blk,path=/i,socket=/s")?.key, "id")
        XCTAssertEqual(error("vhost-user-blk,id=,path=/i,socket=/s")?.key, "id")
        XCTAssertEqual(error("vhost-user-blk,id=d0,noequals,path=/i,socket=/s")?.key, "noequals")
        let unknown = error("vhost-user-scsi,id=d0")
        XCTAssertNotNil(unknown)
        XCTAssertTrue(unknown.map { "\($0)".contains("vhost-user-blk") } ?? false)
        XCTAssertNotNil(error(""))
    }

    func testValidateRejectsDuplicateIdsAndSockets() throws {
        let a = try ExportSpec.parse("vhost-user-blk,id=a,path=/i,socket=/s1")
        let b = try ExportSpec.parse("vhost-user-blk,id=b,path=/i,socket=/s2")
        let a2 = try ExportSpec.parse("vhost-user-blk,id=a,path=/j,socket=/s3")
        let c = try ExportSpec.parse("vhost-user-blk,id=c,path=/i,socket=/s1")
        XCTAssertNoThrow(try ExportSpec.validate([a, b]))
        XCTAssertThrowsError(try ExportSpec.validate([a, b, a2])) { XCTAssertEqual(($0 as? ExportSpecError)?.key, "id") }
        XCTAssertThrowsError(try ExportSpec.validate([a, c])) { XCTAssertEqual(($0 as? ExportSpecError)?.key, "socket") }
    }

    func testHelpTextListsEveryKey() {
        let help = ExportSpec.helpText
        for k in ExportSpec.keys[.vhostUserBlk]! {
            XCTAssertTrue(help.contains("  \(k.name)"), k.name)
            XCTAssertTrue(help.contains(k.help), k.name)
        }
    }
}
