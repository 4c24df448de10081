#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Exports
import Virtio
import VhostUserTestSupport
import XCTest

/// io_uring fixed buffers: with direct=on, guest memory that already has pages behind it is registered with the
/// poller's ring once, and single-buffer reads and writes go out as READ_FIXED / WRITE_FIXED.
final class FixedBufferTests: ExportTestCase {
    var table: FixedBufferTable { pollers!.pollers[0].fixedBufferTable }

    /// Waits (safety net, not an assertion of time) until the poller's table holds `n` chunks.
    func waitForChunks(_ n: Int) -> Int {
        for _ in 0..<500 where table.registeredChunks != n { usleep(10_000) }
        return table.registeredChunks
    }

    /// The kernel must be able to copy a staging ring's table (Linux 6.13); where it cannot, nothing is registered
    /// and the table says why.
    func skipWithoutClone() throws {
        if let why = table.lastFailure, why.contains("CLONE") { throw XCTSkip("kernel lacks buffer cloning: \(why)") }
    }

    func testDirectIOOnPreallocatedMemoryUsesRegisteredBuffers() throws {
        let s = try serve(options: "direct=on", imageSize: 4 << 20)
        let c = try BlkTestClient(socket: s.socket, preallocateRAM: true)
        let data = payload(64 << 10, seed: 11)
        XCTAssertEqual(try c.write(sector: 128, data: data), Status.ok)
        try skipWithoutClone()
        XCTAssertEqual(try readFile(s.image, offset: 128 * 512, count: data.count), data)
        let (st, got) = try c.read(sector: 128, count: data.count)
        XCTAssertEqual(st, Status.ok)
        XCTAssertEqual(got, data)
        XCTAssertEqual(s.counter(.fixedBuffers), 2, "the write and the read went out on registered buffers")
        XCTAssertEqual(table.registeredChunks, 1)
        // A request whose data spans two buffers is a vectored read on the registered file, as before.
        let r = Ring(c)
        let two = try rawRequest(r, type: BlkType.in, sector: 128, inLengths: [4096, 4096])
        XCTAssertEqual(two.status, Status.ok)
        XCTAssertEqual(two.data, Array(data[0..<8192]))
        XCTAssertEqual(s.counter(.fixedBuffers), 2)
        XCTAssertEqual(s.counter(.errors), 0)
        // The frontend goes: its memory leaves the ring's table.
        c.frontend.disconnect()
        XCTAssertEqual(waitForChunks(0), 0)
    }

    func testSparseGuestMemoryIsNeverPinned() throws {
        // QEMU's default memfd has pages only where the guest touched: registering it would allocate all of it.
        let s = try serve(options: "direct=on", imageSize: 4 << 20)
        let c = try BlkTestClient(socket: s.socket)
        let data = payload(16 << 10, seed: 12)
        XCTAssertEqual(try c.write(sector: 8, data: data), Status.ok)
        XCTAssertEqual(try c.read(sector: 8, count: data.count).1, data)
        XCTAssertEqual(s.counter(.fixedBuffers), 0)
        XCTAssertEqual(table.registeredChunks, 0)
    }

    func testFixedBuffersOffAndBufferedIOStayUnregistered() throws {
        let off = try serve(id: "off", options: "direct=on,fixed-buffers=off", imageSize: 4 << 20)
        let buffered = try serve(id: "buf", imageSize: 4 << 20)
        for s in [off, buffered] {
            let c = try BlkTestClient(socket: s.socket, preallocateRAM: true)
            let data = payload(8192, seed: 13)
            XCTAssertEqual(try c.write(sector: 0, data: data), Status.ok)
            XCTAssertEqual(try c.read(sector: 0, count: data.count).1, data)
            XCTAssertEqual(s.counter(.fixedBuffers), 0)
        }
        XCTAssertEqual(table.registeredChunks, 0)
        XCTAssertThrowsError(try ExportSpec.parse("vhost-user-blk,id=x,path=/p,socket=/s,fixed-buffers=yes")) { e in
            XCTAssertTrue("\(e)".contains("fixed-buffers"), "\(e)")
        }
    }

    func testMemoryAddedAndRemovedWhileRunningFollowsTheTable() throws {
        let s = try serve(options: "direct=on", imageSize: 4 << 20)
        let c = try BlkTestClient(socket: s.socket, useAddMemReg: true, preallocateRAM: true)
        XCTAssertEqual(try c.write(sector: 0, data: payload(4096, seed: 1)), Status.ok)
        try skipWithoutClone()
        XCTAssertEqual(table.registeredChunks, 1)
        // A second region arrives with the queue running (ADD_MEM_REG): registered before the queue sees it.
        let ram2 = try GuestRAM(size: 8 << 20, guestAddress: 0x2_0000_0000, name: "ram2", preallocate: true)
        _ = try c.frontend.addMemReg(ram2)
        XCTAssertEqual(table.registeredChunks, 2)
        let r2 = Ring(ram: ram2, queue: c.queues[0], kickFD: c.kicks[0])
        let data = payload(4096, seed: 14)
        let before = s.counter(.fixedBuffers)
        XCTAssertEqual(try rawRequest(r2, type: BlkType.out, sector: 64, out: [data]).status, Status.ok)
        let back = try rawRequest(r2, type: BlkType.in, sector: 64, inLengths: [4096])
        XCTAssertEqual(back.status, Status.ok)
        XCTAssertEqual(back.data, data)
        XCTAssertEqual(s.counter(.fixedBuffers), before + 2, "requests in the new region used its registered buffer")
        // The region goes (REM_MEM_REG): it leaves the table; the first region stays and keeps serving.
        _ = try c.frontend.remMemReg(ram2)
        XCTAssertEqual(table.registeredChunks, 1)
        XCTAssertEqual(try c.read(sector: 64, count: 4096).1, data)
        XCTAssertEqual(s.counter(.errors), 0)
    }
}
