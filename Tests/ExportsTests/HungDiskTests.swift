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
    var mountPoint: String?

    /// An ext4 file system on a loop device, mounted under the test folder; skipped where that cannot be done.
    func mountScratchFileSystem() throws -> String {
        let img = path("fs.img"), mnt = path("mnt")
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: img, contents: nil)
        XCTAssertEqual(truncate(img, 64 << 20), 0)
        let (mk, mkOut) = LoopDevice.run("/sbin/mkfs.ext4", ["-q", "-F", img])
        guard mk == 0 else { throw XCTSkip("mkfs.ext4 failed: \(mkOut)") }
        let (m, mOut) = LoopDevice.run("/bin/mount", ["-o", "loop", img, mnt])
        guard m == 0 else { throw XCTSkip("cannot mount a loop file system here: \(mOut)") }
        mountPoint = mnt
        return mnt
    }

    override func tearDown() {
        if let mnt = mountPoint {
            // Thaw first: nothing that waits on the frozen file system (this process included) can end before.
            _ = LoopDevice.run("/sbin/fsfreeze", ["-u", mnt])
        }
        super.tearDown()
        if let mnt = mountPoint { _ = LoopDevice.run("/bin/umount", [mnt]) }
    }

    func testStopWithRequestsStuckAtTheDeviceCancelsThenFailsThem() throws {
        let mnt = try mountScratchFileSystem()
        pollers = try PollerGroup(count: 1, stopTimeoutMicros: 300_000)
        let s = try serve(options: "direct=on", imageSize: 1 << 20, imagePath: "\(mnt)/disk.img")
        let c = try BlkTestClient(socket: s.socket)
        XCTAssertEqual(try c.write(sector: 0, data: payload(4096, seed: 1)), Status.ok)

        let (fz, fzOut) = LoopDevice.run("/sbin/fsfreeze", ["-f", mnt])
        guard fz == 0 else { throw XCTSkip("fsfreeze failed: \(fzOut)") }
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
        _ = LoopDevice.run("/sbin/fsfreeze", ["-u", mnt])
        c.frontend.disconnect()
        let c2 = try BlkTestClient(socket: s.socket)
        XCTAssertEqual(try c2.write(sector: 64, data: payload(4096, seed: 9)), Status.ok)
        XCTAssertEqual(try c2.read(sector: 64, count: 4096).1, payload(4096, seed: 9))
    }
}
