import Blk
import Exports
import VhostUserTestSupport
import XCTest

/// Guest memory tables: SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG (vhost-user.rst, CONFIGURE_MEM_SLOTS).
final class MemoryTests: ExportTestCase {
    func testAddMemRegInsteadOfSetMemTable() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket, useAddMemReg: true)
        let data = payload(4096, seed: 50)
        XCTAssertEqual(try c.write(sector: 40, data: data), Status.ok)
        XCTAssertEqual(try readFile(s.image, offset: 40 * 512, count: 4096), data)
        XCTAssertEqual(try c.read(sector: 48, count: 4096).1, imageBytes(48 * 512, 4096))
    }

    func testRemMemRegOfUnknownRegionIsRefused() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket, useAddMemReg: true)
        let stranger = try GuestRAM(size: 1 << 20, guestAddress: 0x2_0000_0000)
        XCTAssertNotEqual(try c.frontend.remMemReg(stranger), 0)
        // Same guest address as the real region but another size: still not a match.
        let lookalike = try GuestRAM(size: 1 << 20, guestAddress: c.ram.guestAddress)
        XCTAssertNotEqual(try c.frontend.remMemReg(lookalike), 0)
        // Nothing was removed: I/O still works.
        XCTAssertEqual(try c.read(sector: 0, count: 512).1, imageBytes(0, 512))
    }

    func testOverlappingRegionIsRefused() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket, ramSize: 1 << 20, useAddMemReg: true)
        let overlap = try GuestRAM(size: 1 << 20, guestAddress: c.ram.guestAddress + (1 << 19))
        XCTAssertNotEqual(try c.frontend.addMemReg(overlap), 0)
        XCTAssertEqual(try c.read(sector: 0, count: 512).1, imageBytes(0, 512))
    }

    func testBuffersInASecondRegionAndAcrossTheBoundary() throws {
        let s = try serve()
        // Two regions back to back in guest physical space, from two different memfds.
        let c = try BlkTestClient(socket: s.socket, ramSize: 1 << 20, useAddMemReg: true)
        let second = try GuestRAM(size: 1 << 20, guestAddress: c.ram.guestAddress + (1 << 20))
        XCTAssertEqual(try c.frontend.addMemReg(second), 0)

        // A read into the second region only.
        var h = requestHeader(type: BlkType.in, sector: 8)
        let hdr = c.ram.allocate(16)
        c.ram.write(hdr, h)
        let st = c.ram.allocate(1, alignment: 1)
        let data2 = second.allocate(4096, alignment: 4096)
        let q = c.queues[0]
        let head = q.add([.init(gpa: hdr, length: 16, writable: false), .init(gpa: data2, length: 4096, writable: true),
                          .init(gpa: st, length: 1, writable: true)])
        kick(c.kicks[0])
        var u = try XCTUnwrap(q.waitUsed())
        XCTAssertEqual(u.head, head)
        XCTAssertEqual(c.ram.read(st, 1), [Status.ok])
        XCTAssertEqual(second.read(data2, 4096), imageBytes(8 * 512, 4096))

        // A write from a buffer that starts 1 KiB before the end of the first region and ends in the second.
        let boundary = c.ram.guestAddress + (1 << 20)
        let start = boundary - 1024
        let bytes = payload(4096, seed: 51)
        c.ram.write(start, Array(bytes.prefix(1024)))
        // The second region's first bytes hold the rest (its allocator already gave 4 KiB away elsewhere).
        second.write(boundary, Array(bytes.suffix(3072)))
        h = requestHeader(type: BlkType.out, sector: 64)
        let hdr2 = c.ram.allocate(16)
        c.ram.write(hdr2, h)
        let head2 = q.add([.init(gpa: hdr2, length: 16, writable: false), .init(gpa: start, length: 4096, writable: false),
                           .init(gpa: st, length: 1, writable: true)])
        kick(c.kicks[0])
        u = try XCTUnwrap(q.waitUsed())
        XCTAssertEqual(u.head, head2)
        XCTAssertEqual(c.ram.read(st, 1), [Status.ok])
        XCTAssertEqual(try readFile(s.image, offset: 64 * 512, count: 4096), bytes)
    }

    func testBufferOutsideGuestMemoryStopsTheQueue() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket, ramSize: 1 << 20)
        let (ring, err) = try armErrorFD(c, 0)
        let hdr = c.ram.allocate(16)
        c.ram.write(hdr, requestHeader(type: BlkType.in, sector: 0))
        let st = c.ram.allocate(1, alignment: 1)
        c.ram.write(st, [0xff])
        c.queues[0].add([.init(gpa: hdr, length: 16, writable: false),
                         .init(gpa: 0x7_0000_0000, length: 4096, writable: true),
                         .init(gpa: st, length: 1, writable: true)])
        kick(ring.kickFD)
        XCTAssertEqual(waitEventFD(err), 1, "SET_VRING_ERR fd never signalled")
        XCTAssertTrue(logs.contains("queue 0 stopped: descriptor addr=0x700000000"), "\(logs.all)")
        XCTAssertEqual(c.ram.read(st, 1), [0xff])  // never completed
        XCTAssertEqual(c.queues[0].usedIndex, 0)
        // Stopping the broken ring still reports what was consumed.
        XCTAssertEqual(try c.frontend.getVringBase(0), 1)
    }
}
