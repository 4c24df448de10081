#if canImport(Glibc)
import Glibc
#endif
import VhostUserTestSupport
import XCTest

/// virtio 1.3, 5.10.6.6: a device that restarts tells the driver, on the event queue, that every connection is
/// gone (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET). QEMU's vhost-user-vsock keeps the event queue to itself; a
/// frontend that hands it over (as these tests do, and as VDUSE will) gets the event from vdevd.
final class VsockTransportResetTests: VsockTestCase {
    struct Session {
        let fe: VhostUserFrontend
        let ram: GuestRAM
        let event: DriverVirtqueue
        let eventBuffer: UInt64
        let fds: [Int32]
    }

    /// Negotiates and starts rx, tx and event queues; one 8-byte buffer waits on the event queue.
    func startAllQueues(_ socket: String) throws -> Session {
        let fe = try VhostUserFrontend(path: socket)
        let ram = try GuestRAM(size: 4 << 20, guestAddress: 0x1000_0000)
        let offered = try fe.getU64(.getFeatures)
        _ = try fe.getU64(.getProtocolFeatures)
        try fe.setProtocolFeatures(1 << 3)
        try fe.command(.setOwner)
        try fe.setFeatures(offered | VhostUserFrontend.protocolFeaturesBit)
        try fe.setMemTable([ram])
        let queues = (0..<3).map { _ in DriverVirtqueue(ram: ram, size: 64) }
        let buffer = ram.allocate(8)
        ram.fill(buffer, 8, byte: 0xee)
        queues[2].add([.init(gpa: buffer, length: 8, writable: true)])
        var fds: [Int32] = []
        for i in 0..<3 {
            let (k, c) = try fe.startVring(UInt32(i), queues[i])
            fds += [k, c]
        }
        kick(fds[4])
        return Session(fe: fe, ram: ram, event: queues[2], eventBuffer: buffer, fds: fds)
    }

    func testFirstStartSendsNoTransportReset() throws {
        let s = try serve(id: "tr0", cid: 7)
        let a = try startAllQueues(s.socket)
        defer { for f in a.fds { close(f) } }
        // GET_VRING_BASE is answered only after the poller let the queue go: it has run the event queue by then.
        _ = try a.fe.getVringBase(2)
        XCTAssertEqual(a.event.usedIndex, 0, "a device starting for the first time has nothing to reset")
        XCTAssertEqual(a.ram.read(a.eventBuffer, 4), [0xee, 0xee, 0xee, 0xee])
    }

    func testRestartedDeviceSendsTransportReset() throws {
        let s = try serve(id: "tr1", cid: 8)
        let first = try startAllQueues(s.socket)
        _ = try first.fe.getVringBase(2)
        XCTAssertEqual(first.event.usedIndex, 0)
        first.fe.disconnect()
        for f in first.fds { close(f) }

        // A new frontend on the same export: the device restarts and says so.
        let second = try startAllQueues(s.socket)
        defer { for f in second.fds { close(f) } }
        guard let used = second.event.waitUsed() else { return XCTFail("no event after the restart") }
        XCTAssertEqual(used.length, 4, "struct virtio_vsock_event is one le32")
        XCTAssertEqual(second.ram.read(second.eventBuffer, 4), [0, 0, 0, 0], "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET is 0")
        XCTAssertEqual(second.ram.read(second.eventBuffer + 4, 4), [0xee, 0xee, 0xee, 0xee], "nothing past the event")
        XCTAssertTrue(logs.contains("TRANSPORT_RESET sent to the guest"))
    }
}
