#if canImport(Glibc)
import Glibc
#endif
import Exports
import VhostUserTestSupport
import Virtio
import Vsock
import XCTest

/// Config space and feature negotiation (virtio 1.3, 5.10.3-5.10.4).
final class VsockConfigTests: VsockTestCase {
    func testConfigSpaceCarriesGuestCIDLittleEndian() throws {
        let s = try serve(cid: 0xFEDC_BA98)
        do {
            let fe = try VhostUserFrontend(path: s.socket)
            let pf = try fe.getU64(.getProtocolFeatures)
            XCTAssertNotEqual(pf & (1 << 9), 0, "CONFIG protocol feature offered")
            try fe.setProtocolFeatures(pf & ((1 << 3) | (1 << 9)))
            // struct virtio_vsock_config { le64 guest_cid; }
            XCTAssertEqual(try fe.getConfig(offset: 0, size: 8), [0x98, 0xBA, 0xDC, 0xFE, 0, 0, 0, 0])
            XCTAssertEqual(try fe.getConfig(offset: 4, size: 4), [0, 0, 0, 0])
            XCTAssertEqual(try fe.getConfig(offset: 1, size: 2), [0xBA, 0xDC])
            // Past the structure: zeros.
            XCTAssertEqual(try fe.getConfig(offset: 8, size: 8), [UInt8](repeating: 0, count: 8))
        }   // one frontend at a time: this one leaves before the driver connects

        // The guest driver reads the same value.
        let d = try guest(s)
        XCTAssertEqual(d.guestCID, 0xFEDC_BA98)
    }

    func testConfigSpaceIsReadOnly() throws {
        let s = try serve(cid: 7)
        let fe = try VhostUserFrontend(path: s.socket)
        let pf = try fe.getU64(.getProtocolFeatures)
        try fe.setProtocolFeatures(pf & ((1 << 3) | (1 << 9)))
        XCTAssertEqual(try fe.setConfig(offset: 0, bytes: [9, 0, 0, 0, 0, 0, 0, 0]), 1, "write refused (REPLY_ACK nonzero)")
        XCTAssertEqual(try fe.getConfig(offset: 0, size: 8), [7, 0, 0, 0, 0, 0, 0, 0])
    }

    func testFeaturesOfferedExactly() throws {
        let s = try serve()
        let fe = try VhostUserFrontend(path: s.socket)
        let offered = try fe.getU64(.getFeatures)
        // VERSION_1 (32), RING_EVENT_IDX (29), RING_INDIRECT_DESC (28), VIRTIO_VSOCK_F_STREAM (0),
        // VIRTIO_VSOCK_F_SEQPACKET (1), plus VHOST_USER_F_PROTOCOL_FEATURES (30) and VHOST_F_LOG_ALL (26, live
        // migration). Nothing else.
        let expected: UInt64 = 1 << 32 | 1 << 29 | 1 << 28 | 1 << 0 | 1 << 1
        XCTAssertEqual(VsockDevice.features, expected)
        XCTAssertEqual(offered, VsockDevice.features | 1 << 30 | 1 << 26)
        XCTAssertEqual(offered & VirtioFeature.ringPacked, 0)
        XCTAssertEqual(offered & VirtioFeature.accessPlatform, 0)
        XCTAssertEqual(try fe.getU64(.getQueueNum), 3, "rx, tx and event queues")
    }

    func testFeaturesNotOfferedAreRefused() throws {
        let s = try serve()
        let fe = try VhostUserFrontend(path: s.socket)
        let pf = try fe.getU64(.getProtocolFeatures)
        try fe.setProtocolFeatures(pf & (1 << 3))
        // VIRTIO_VSOCK_F_NO_IMPLIED_STREAM (2) is not offered: the ack must be refused.
        XCTAssertEqual(try fe.command(.setFeatures, payload: fe.u64Payload(VsockDevice.features | 1 << 2)), 1)
        XCTAssertEqual(try fe.command(.setFeatures, payload: fe.u64Payload(VsockDevice.features)), 0)
    }
}
