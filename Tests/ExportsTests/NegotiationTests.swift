import Blk
import Exports
import VhostUserTestSupport
import Virtio
import XCTest

/// Feature and protocol negotiation (vhost-user.rst "Front-end message types"; virtio 1.3, 5.2.3).
final class NegotiationTests: ExportTestCase {
    // virtio feature bits, written out here independently of the sources.
    let fSizeMax: UInt64 = 1 << 1, fSegMax: UInt64 = 1 << 2, fRO: UInt64 = 1 << 5, fBlkSize: UInt64 = 1 << 6
    let fFlush: UInt64 = 1 << 9, fTopology: UInt64 = 1 << 10, fConfigWCE: UInt64 = 1 << 11, fMQ: UInt64 = 1 << 12
    let fDiscard: UInt64 = 1 << 13, fWriteZeroes: UInt64 = 1 << 14
    let fIndirect: UInt64 = 1 << 28, fEventIdx: UInt64 = 1 << 29, fProtocol: UInt64 = 1 << 30, fVersion1: UInt64 = 1 << 32

    func testGetFeaturesIsDeviceFeaturesPlusProtocolFeaturesBit() throws {
        let s = try serve()
        let fe = try VhostUserFrontend(path: s.socket)
        let f = try fe.getU64(.getFeatures)
        XCTAssertEqual(f, BlkDevice.features | fProtocol)
        for bit in [fSizeMax, fSegMax, fBlkSize, fFlush, fTopology, fConfigWCE, fMQ, fDiscard, fWriteZeroes,
                    fIndirect, fEventIdx, fProtocol, fVersion1] {
            XCTAssertNotEqual(f & bit, 0, "bit \(bit.trailingZeroBitCount) missing from 0x\(String(f, radix: 16))")
        }
        XCTAssertEqual(f & fRO, 0)
    }

    func testReadonlyExportOffersROAndNothingThatWrites() throws {
        let s = try serve(options: "readonly=on")
        let fe = try VhostUserFrontend(path: s.socket)
        let f = try fe.getU64(.getFeatures)
        XCTAssertEqual(f, BlkDevice.readonlyFeatures | fProtocol)
        XCTAssertNotEqual(f & fRO, 0)
        XCTAssertEqual(f & fDiscard, 0)
        XCTAssertEqual(f & fWriteZeroes, 0)
        XCTAssertEqual(f & fConfigWCE, 0)
        XCTAssertNotEqual(f & fVersion1, 0)
        XCTAssertNotEqual(f & fFlush, 0)
    }

    func testProtocolFeaturesOffered() throws {
        let s = try serve()
        let fe = try VhostUserFrontend(path: s.socket)
        let pf = try fe.getU64(.getProtocolFeatures)
        for bit in [0, 3, 9, 12, 13, 15, 16] {
            XCTAssertNotEqual(pf & (1 << UInt64(bit)), 0, "protocol feature \(bit) not offered: 0x\(String(pf, radix: 16))")
        }
        // Not implemented, so never offered: LOG_SHMFD(1), BACKEND_REQ(5).
        for bit in [1, 5] {
            XCTAssertEqual(pf & (1 << UInt64(bit)), 0, "protocol feature \(bit) offered but not implemented")
        }
    }

    func testQueueNumIsNumQueues() throws {
        let s = try serve(options: "num-queues=3")
        let fe = try VhostUserFrontend(path: s.socket)
        XCTAssertEqual(try fe.getU64(.getQueueNum), 3)
        XCTAssertEqual(BlkConfig(try fe.getConfig(offset: 0, size: 60)).numQueues, 3)
    }

    func testMaxMemSlotsIsReportedAndEnforced() throws {
        let s = try serve()
        let fe = try ackingFrontend(s.socket)
        let slots = try fe.getU64(.getMaxMemSlots)
        XCTAssertGreaterThan(slots, 0)
        XCTAssertLessThanOrEqual(slots, 509)  // QEMU's own limit; anything above it is nonsense
        var regions: [GuestRAM] = []
        for i in 0..<Int(slots) {
            let r = try GuestRAM(size: 4096, guestAddress: 0x10_0000 * UInt64(i + 1))
            regions.append(r)
            XCTAssertEqual(try fe.addMemReg(r), 0, "region \(i) of \(slots) refused")
        }
        let extra = try GuestRAM(size: 4096, guestAddress: 0x10_0000 * (slots + 1))
        XCTAssertNotEqual(try fe.addMemReg(extra), 0, "more regions than GET_MAX_MEM_SLOTS accepted")
        // Removing one frees a slot.
        XCTAssertEqual(try fe.remMemReg(regions[0]), 0)
        XCTAssertEqual(try fe.addMemReg(extra), 0)
    }

    func testSetFeaturesWithBitNotOfferedIsRefused() throws {
        let s = try serve()
        let fe = try ackingFrontend(s.socket)
        let offered = try fe.getU64(.getFeatures)
        XCTAssertNotEqual(try fe.command(.setFeatures, payload: fe.u64Payload(offered | fRO)), 0)
        XCTAssertNotEqual(try fe.command(.setFeatures, payload: fe.u64Payload(offered | (1 << 63))), 0)
        XCTAssertEqual(try fe.command(.setFeatures, payload: fe.u64Payload(offered)), 0)
    }

    func testReadonlyExportRefusesWriteFeatures() throws {
        let s = try serve(options: "readonly=on")
        let fe = try ackingFrontend(s.socket)
        let offered = try fe.getU64(.getFeatures)
        XCTAssertNotEqual(try fe.command(.setFeatures, payload: fe.u64Payload(offered | fDiscard)), 0)
        XCTAssertNotEqual(try fe.command(.setFeatures, payload: fe.u64Payload(offered | fWriteZeroes)), 0)
        XCTAssertNotEqual(try fe.command(.setFeatures, payload: fe.u64Payload(offered | fConfigWCE)), 0)
        XCTAssertEqual(try fe.command(.setFeatures, payload: fe.u64Payload(offered)), 0)
    }

    func testSetProtocolFeaturesWithUnofferedBitIsRefused() throws {
        let s = try serve()
        let fe = try VhostUserFrontend(path: s.socket)
        let pf = try fe.getU64(.getProtocolFeatures)
        fe.replyAck = true  // ask for an answer even though REPLY_ACK is not negotiated yet
        XCTAssertNotEqual(try fe.command(.setProtocolFeatures, payload: fe.u64Payload(pf | (1 << 5))), 0)
        // The connection stays usable.
        XCTAssertEqual(try fe.command(.setProtocolFeatures, payload: fe.u64Payload(pf)), 0)
        XCTAssertEqual(try fe.command(.setOwner), 0)
    }

    func testClientNegotiatesEverythingOffered() throws {
        let s = try serve()
        let c = try BlkTestClient(socket: s.socket)
        XCTAssertEqual(c.ackedFeatures, BlkDevice.features | fProtocol)
        XCTAssertEqual(try c.read(sector: 0, count: 512).0, Status.ok)
    }

    func testSetStatusIsReadBackAndZeroResets() throws {
        let s = try serve()
        let fe = try ackingFrontend(s.socket)
        XCTAssertEqual(try fe.getU64(.getStatus), 0)
        // ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
        XCTAssertEqual(try fe.command(.setStatus, payload: fe.u64Payload(0x0f)), 0)
        XCTAssertEqual(try fe.getU64(.getStatus), 0x0f)
        XCTAssertEqual(try fe.setConfig(offset: 32, bytes: [0]), 0)
        XCTAssertEqual(try fe.getConfig(offset: 32, size: 1), [0])
        XCTAssertEqual(try fe.command(.setStatus, payload: fe.u64Payload(0)), 0)
        XCTAssertEqual(try fe.getU64(.getStatus), 0)
        // A device reset restores the operator's write-cache setting.
        XCTAssertEqual(try fe.getConfig(offset: 32, size: 1), [1])
    }
}
