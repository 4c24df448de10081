#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import VhostUserTestSupport
import XCTest

/// What a frontend passes as notifiers and memory must be what it claims to be.
final class HostileNotifierTests: ExportTestCase {
    /// A pipe as a call fd could block the poller on a full pipe: only eventfds are taken.
    func testRejectsCallFDThatIsNotAnEventfd() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        var p: [Int32] = [0, 0]
        XCTAssertEqual(pipe(&p), 0)
        fdsToClose += p
        let ack = try c.frontend.command(.setVringCall, payload: c.frontend.u64Payload(0), fds: [p[1]])
        XCTAssertNotEqual(ack, 0, "a pipe is not a notifier")
        XCTAssertTrue(logs.contains("the fd is not an eventfd"))
        // The queue keeps its old call fd and keeps serving.
        XCTAssertEqual(try c.read(sector: 0, count: 512).1, imageBytes(0, 512))
    }

    func testRejectsKickFDThatIsNotAnEventfd() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        let base = try c.frontend.getVringBase(0)
        let fd = open("/dev/null", O_RDONLY)
        fdsToClose.append(fd)
        XCTAssertNotEqual(try c.frontend.command(.setVringKick, payload: c.frontend.u64Payload(0), fds: [fd]), 0)
        // A proper restart still works afterwards.
        let (k, call) = try c.frontend.startVring(0, c.queues[0], base: base)
        fdsToClose += [k, call]
        let b = c.allocateRequest(dataCapacity: 512)
        let head = c.submit(type: .read, sector: 0, buffers: b, length: 512, notify: false)
        kick(k)
        XCTAssertEqual(c.queues[0].waitUsed()?.head, head)
        XCTAssertEqual(c.ram.read(b.data, 512), imageBytes(0, 512))
    }

    /// A region claiming more bytes than its fd holds would SIGBUS the daemon when a descriptor points past
    /// the end: it is refused when it is added.
    func testRejectsRegionLargerThanItsFD() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket, ramSize: 1 << 20, useAddMemReg: true)
        let small = try GuestRAM(size: 1 << 20, guestAddress: c.ram.guestAddress + (1 << 20))
        // Claim 16 MiB of a 1 MiB memfd.
        var payload = [UInt8](repeating: 0, count: 8)
        payload.le(small.guestAddress)
        payload.le(UInt64(16 << 20))
        payload.le(small.userAddress)
        payload.le(UInt64(0))
        XCTAssertNotEqual(try c.frontend.command(.addMemReg, payload: payload, fds: [small.fd]), 0)
        XCTAssertTrue(logs.contains("memory fd holds 1048576 bytes, the mapping needs 16777216"), "\(logs.all)")
        XCTAssertEqual(try c.read(sector: 0, count: 512).1, imageBytes(0, 512))
    }
}
