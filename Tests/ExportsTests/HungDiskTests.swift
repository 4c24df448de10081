#if canImport(Glibc)
import Glibc
#endif
import Blk
import CVdevd
import Exports
import Foundation
import VhostUserTestSupport
import Virtio
import XCTest

/// A disk that stops answering must not hang the daemon: a queue asked to stop waits a bounded time, cancels
/// what is in flight, then fails what is left with IOERR. The hung disk is real: writes to a file on a frozen
/// file system (fsfreeze) block in the kernel until it is thawed, and no cancel can take them back.
final class HungDiskTests: ExportTestCase {
    var fs: ScratchFileSystem?

    override func tearDown() {
        // Thaw first: nothing that waits on the frozen file system (this process included) can end before.
        fs?.thaw()
        super.tearDown()
        fs?.unmount()
    }

    func testStopWithRequestsStuckAtTheDeviceCancelsThenFailsThem() throws {
        let scratch = try skipUnavailable { try ScratchFileSystem(in: dir) }
        fs = scratch
        let mnt = scratch.mountPoint
        pollers = try PollerGroup(count: 1, stopTimeoutMicros: 300_000)
        let s = try serve(options: "direct=on", imageSize: 1 << 20, imagePath: "\(mnt)/disk.img")
        let c = try BlkTestClient(socket: s.socket)
        XCTAssertEqual(try c.write(sector: 0, data: payload(4096, seed: 1)), Status.ok)

        try skipUnavailable { try scratch.freeze() }
        let r = Ring(c)
        var heads = Set<UInt16>()
        var statuses: [UInt64] = []
        for i in 0..<4 {
            let sub = submitRaw(r, header: requestHeader(type: BlkType.out, sector: UInt64(8 + i * 8)),
                                out: [payload(4096, seed: UInt8(i))], notify: i == 3)
            heads.insert(sub.head)
            statuses.append(sub.status!)
        }
        // The writes reach the file system and block there.
        XCTAssertTrue(eventually(5) { s.counter(.requests) == 5 })
        usleep(100_000)
        XCTAssertEqual(s.counter(.writtenBytes), 4096, "a write got through a frozen file system")

        // GET_VRING_BASE stops the queue: it must come back although the device never answers.
        let base = try c.frontend.getVringBase(0)
        XCTAssertEqual(base, 5)
        var seen = Set<UInt16>()
        while let u = c.queues[0].popUsed() { seen.insert(u.head) }
        XCTAssertEqual(seen, heads, "every stuck request was returned to the driver")
        for st in statuses { XCTAssertEqual(c.ram.read(st, 1), [Status.ioerr]) }
        XCTAssertEqual(s.counter(.timedOut), 4)
        XCTAssertTrue(logs.all.contains { $0.contains("cancelling them") }, "\(logs.all)")
        XCTAssertTrue(logs.all.contains { $0.contains("4 request(s) the device did not give back failed with IOERR") },
                      "\(logs.all)")

        // The device answers at last; the export serves a new frontend as usual.
        scratch.thaw()
        c.frontend.disconnect()
        let c2 = try BlkTestClient(socket: s.socket)
        XCTAssertEqual(try c2.write(sector: 64, data: payload(4096, seed: 9)), Status.ok)
        XCTAssertEqual(try c2.read(sector: 64, count: 4096).1, payload(4096, seed: 9))
    }
}
