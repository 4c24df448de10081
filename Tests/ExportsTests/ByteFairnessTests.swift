#if canImport(Glibc)
import Glibc
#endif
import Exports
import Foundation
import VhostUserTestSupport
import Virtio
import XCTest

/// Issue 14, finding 2: byte-heavy requests on one export do not hold another export's requests on the same
/// poller. Images on tmpfs, so reads are done inline on the poller (where the time goes to the poller itself).
final class ByteFairnessTests: ExportTestCase {
    private func shmDir() throws -> String {
        guard let d = try? makeTemporaryDirectory("/dev/shm/vdevd-xt-") else { throw XCTSkip("no tmpfs at /dev/shm") }
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }

    /// A queues 32 reads of 8 MiB (256 MiB, within the advertised limits); B's one 4 KiB read, queued right after,
    /// is answered while A's bytes are still far from done (A's read-bytes counter, read at B's answer).
    func testLargeReadsOnOneExportDoNotHoldAnotherOnTheSamePoller() throws {
        let shm = try shmDir()
        let a = try serve(id: "diskA", imageSize: 8 << 20, imagePath: "\(shm)/a.img")
        let b = try serve(id: "diskB", imageSize: 8 << 20, imagePath: "\(shm)/b.img")
        let ca = try BlkTestClient(socket: a.socket, queueSize: 64, ramSize: 16 << 20)
        let cb = try BlkTestClient(socket: b.socket)
        // One header and 8 x 1 MiB data buffers (size_max) shared by every request of A; a status byte each.
        let header = ca.ram.allocate(16)
        ca.ram.write(header, requestHeader(type: 0, sector: 0))
        let data = (0..<8).map { _ in ca.ram.allocate(1 << 20, alignment: 4096) }
        let statuses = (0..<32).map { _ in ca.ram.allocate(1, alignment: 1) }
        for st in statuses {
            ca.ram.write(st, [0xff])
            var bufs = [DriverVirtqueue.Buffer(gpa: header, length: 16, writable: false)]
            bufs += data.map { DriverVirtqueue.Buffer(gpa: $0, length: 1 << 20, writable: true) }
            bufs.append(.init(gpa: st, length: 1, writable: true))
            _ = ca.queues[0].add(bufs, indirect: true)
        }
        let rb = cb.allocateRequest(dataCapacity: 4096)
        kick(ca.kicks[0])
        let headB = cb.submit(type: .read, sector: 8, buffers: rb, length: 4096)
        XCTAssertEqual(cb.queues[0].waitUsed(timeout: 60)?.head, headB)
        let aBytesAtB = a.counter(.readBytes)
        XCTAssertEqual(cb.ram.read(rb.data, 4096), imageBytes(8 * 512, 4096))
        XCTAssertLessThan(aBytesAtB, 256 << 20, "B waited for all of A's 256 MiB")
        // A's requests all complete, with the right bytes.
        var done = 0
        while done < 32, ca.queues[0].waitUsed(timeout: 60) != nil { done += 1 }
        XCTAssertEqual(done, 32)
        XCTAssertEqual(a.counter(.readBytes), 256 << 20)
        XCTAssertEqual(statuses.map { ca.ram.read($0, 1)[0] }, [UInt8](repeating: 0, count: 32))
        XCTAssertEqual(ca.ram.read(data[0], 4096), imageBytes(0, 4096))
        XCTAssertEqual(ca.ram.read(data[7] + (1 << 20) - 4096, 4096), imageBytes((8 << 20) - 4096, 4096))
        print("ByteFairness: A had completed \(aBytesAtB >> 20) MiB of 256 MiB when B's read was answered")
    }

    /// A write to tmpfs larger than a chunk is done over several passes and is still exact.
    func testInlineTransferSplitAcrossPassesIsExact() throws {
        let shm = try shmDir()
        let a = try serve(id: "diskA", imageSize: 8 << 20, imagePath: "\(shm)/a.img")
        let c = try BlkTestClient(socket: a.socket, ramSize: 16 << 20)
        let bytes = payload(3 << 20, seed: 9)
        var sector: UInt64 = 0
        for chunk in stride(from: 0, to: bytes.count, by: 1 << 20) {
            XCTAssertEqual(try c.write(sector: sector, data: Array(bytes[chunk..<(chunk + (1 << 20))])), 0)
            sector += 2048
        }
        // One 3 MiB read of what was written (three chunks, over three passes).
        XCTAssertEqual(try c.read(sector: 0, count: 3 << 20).1, bytes)
        XCTAssertEqual(try readFile(a.image, offset: 0, count: 3 << 20), bytes)
    }
}
