#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Service
import VhostUserTestSupport
import XCTest

/// `remove` with requests at the device: they complete (status OK, data in the file) before the frontend
/// is disconnected and the socket removed. The device is made slow for real: the image lives on an ext4 file
/// system that the test freezes (writes block in the kernel) and thaws while the remove waits.
final class RemoveInFlightTests: ServiceTestCase {
    func testRemoveLetsRequestsAtTheDeviceCompleteFirst() throws {
        guard getuid() == 0 else { throw XCTSkip("needs root to mount and freeze a file system") }
        let fs = try skipUnavailable { try ScratchFileSystem(in: dir) }
        let mnt = fs.mountPoint
        defer {
            fs.thaw()
            for p in running where p.isRunning { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() }
            fs.unmount()
        }
        let img = "\(mnt)/disk.img"
        FileManager.default.createFile(atPath: img, contents: Data(count: 1 << 20))
        let mgmt = path("m.sock"), sock = path("d.sock")
        let d = try launch(["--management-socket", mgmt, "--export", blk("d0", img, sock, "direct=on")])
        guard waitLog(d) else { return }
        let c = try BlkTestClient(socket: sock)
        XCTAssertEqual(try c.write(sector: 0, data: payload(4096, seed: 1)), 0)

        try skipUnavailable { try fs.freeze() }
        var requests: [(head: UInt16, status: UInt64, sector: UInt64, data: [UInt8])] = []
        for i in 0..<4 {
            let b = c.allocateRequest(dataCapacity: 4096)
            let data = payload(4096, seed: UInt8(10 + i))
            c.ram.write(b.data, data)
            let sector = UInt64(8 + i * 8)
            let head = c.submit(type: .write, sector: sector, buffers: b, length: 4096)
            requests.append((head, b.status, sector, data))
        }
        // All four have reached the device (counted as requests) and none has finished (no bytes written).
        var stats = try XCTUnwrap(manage(mgmt, ["command": "stats", "id": "d0"]).stats?.exports.first)
        while stats.total("requests") < 5 && d.process.isRunning {
            usleep(2000)
            stats = try XCTUnwrap(manage(mgmt, ["command": "stats", "id": "d0"]).stats?.exports.first)
        }
        XCTAssertEqual(stats.total("requests"), 5)
        XCTAssertEqual(stats.total("writtenBytes"), 4096)

        // The disk answers again a little after the remove has started waiting for it.
        let thaw = Thread { [self] in
            usleep(300_000)
            // Straight to the tool: this thread only lets the disk go on; the test's own thaw stays at the end.
            _ = runTool("/sbin/fsfreeze", ["-u", mnt])
        }
        thaw.start()
        let reply = try manage(mgmt, ["command": "remove", "id": "d0"])
        XCTAssertTrue(reply.ok, reply.error ?? "")
        XCTAssertNil(fileStat(sock))
        XCTAssertTrue(c.frontend.backendClosed())
        // Every request came back to the driver with OK before the disconnect, and its data is in the file.
        var used = Set<UInt16>()
        while let u = c.queues[0].popUsed() { used.insert(u.head) }
        XCTAssertEqual(used, Set(requests.map(\.head)))
        let fd = open(img, O_RDONLY)
        defer { close(fd) }
        for r in requests {
            XCTAssertEqual(c.ram.read(r.status, 1), [0], "request at sector \(r.sector)")
            var buf = [UInt8](repeating: 0, count: 4096)
            XCTAssertEqual(pread(fd, &buf, 4096, off_t(r.sector * 512)), 4096)
            XCTAssertTrue(buf == r.data, "sector \(r.sector): the request's data is not in the file")
        }
        XCTAssertTrue(d.err().contains("export=d0 [Service] export removed"), d.err())
        XCTAssertFalse(d.err().contains("cancelling"), d.err())
        stop(d)
    }
}
