#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Foundation
import VhostUserTestSupport
import Virtio
import XCTest

/// In-flight tracking (vhost-user INFLIGHT_SHMFD): a vdevd killed while requests are in flight, some completed
/// out of order, is restarted, and the new one completes each request exactly once. The daemon is the real
/// binary, killed with SIGKILL; the slow request is a write to a frozen file system.
final class InflightTests: ExportTestCase {
    var fs: ScratchFileSystem?
    var daemons: [Process] = []

    override func tearDown() {
        if let run = testRun, run.totalFailureCount > 0 {
            for n in daemons.indices { print("---- vdevd \(n) ----\n\(daemonLog(n))") }
        }
        fs?.thaw()
        for p in daemons where p.isRunning {
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
        }
        super.tearDown()
        fs?.unmount()
    }

    static let inflightFeature: UInt64 = 1 << 12
    static let queueSize: UInt16 = 64

    /// vdevd as an operator starts it; returns once it says it is ready.
    func startDaemon(image: String, socket: String) throws -> Process {
        guard let bin = CLITests.binary else { throw XCTSkip("vdevd binary not found: run `swift build` first") }
        let log = path("vdevd.\(daemons.count).log")
        FileManager.default.createFile(atPath: log, contents: nil)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: bin)
        p.arguments = ["--export", "vhost-user-blk,id=d0,path=\(image),socket=\(socket)", "--stop-timeout-ms", "60000"]
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle(forWritingAtPath: log)
        try p.run()
        daemons.append(p)
        XCTAssertTrue(eventually { (try? String(contentsOfFile: log, encoding: .utf8))?.contains("vdevd ready") ?? false },
                      "vdevd never became ready")
        return p
    }

    func daemonLog(_ n: Int) -> String { (try? String(contentsOfFile: path("vdevd.\(n).log"), encoding: .utf8)) ?? "" }

    /// Negotiates as QEMU's vhost-user-blk does: protocol features (with in-flight tracking when `track`), the
    /// in-flight region (asked for once, then handed back on every connection), features, memory, ring 0.
    func connect(_ socket: String, ram: GuestRAM, queue: DriverVirtqueue, base: UInt16, track: Bool,
                 inflightFD: inout Int32?) throws -> (VhostUserFrontend, Int32) {
        let fe = try VhostUserFrontend(path: socket)
        let features = try fe.getU64(.getFeatures)
        let pf = try fe.getU64(.getProtocolFeatures)
        XCTAssertNotEqual(pf & InflightTests.inflightFeature, 0, "blk offers in-flight tracking")
        try fe.setProtocolFeatures(pf & ((1 << 0) | (1 << 3) | (track ? InflightTests.inflightFeature : 0)))
        try fe.command(.setOwner)
        if track {
            var d: [UInt8] = []
            d.le(UInt64(0)); d.le(UInt64(0)); d.le(UInt16(1)); d.le(UInt16(InflightTests.queueSize)); d.le(UInt32(0))
            if inflightFD == nil {
                let (reply, fd) = try fe.callReceivingFD(VhostUserFrontend.Request.getInflightFD.rawValue, payload: d)
                XCTAssertEqual(reply.count, 24)
                XCTAssertEqual(reply.u64(0), UInt64(InflightMemory.regionSize(queueSize: Int(InflightTests.queueSize))))
                inflightFD = try XCTUnwrap(fd)
            }
            var st = stat()
            XCTAssertEqual(fstat(inflightFD!, &st), 0)
            d.replaceSubrange(0..<8, with: withUnsafeBytes(of: UInt64(st.st_size).littleEndian, Array.init))
            try fe.command(.setInflightFD, payload: d, fds: [inflightFD!])
        }
        // No EVENT_IDX: the test's driver kicks on every request.
        try fe.setFeatures((features & ~(1 << 29)) | VhostUserFrontend.protocolFeaturesBit)
        try fe.setMemTable([ram])
        let (kick, _) = try fe.startVring(0, queue, base: UInt32(base))
        return (fe, kick)
    }

    /// Request A (a write) hangs at the frozen disk while B (a read) completes after it; vdevd is killed, the disk
    /// thawed, vdevd started again and the frontend reconnects as QEMU does after a backend died (the ring rewound
    /// to its used index). Returns the heads the restarted backend put on the used ring before C (a read issued
    /// after the restart) and C's, and A's, B's, C's heads.
    func killBetweenOutOfOrderCompletions(track: Bool) throws
        -> (afterRestart: [UInt16], a: UInt16, b: UInt16, c: UInt16, dataA: [UInt8], readC: [UInt8]) {
        let scratch = try skipUnavailable { try ScratchFileSystem(in: dir) }
        fs = scratch
        let image = "\(scratch.mountPoint)/disk.img"
        try createImage(at: image, size: 1 << 20)
        let socket = path("d0.sock")
        let first = try startDaemon(image: image, socket: socket)
        let ram = try GuestRAM(size: 8 << 20, guestAddress: 0x1_0000_0000)
        let q = DriverVirtqueue(ram: ram, size: InflightTests.queueSize)
        var inflightFD: Int32?
        defer { if let f = inflightFD { close(f) } }
        let (fe, kick1) = try connect(socket, ram: ram, queue: q, base: 0, track: track, inflightFD: &inflightFD)
        let ring = Ring(ram: ram, queue: q, kickFD: kick1)

        try skipUnavailable { try scratch.freeze() }
        let dataA = payload(4096, seed: 21)
        let a = submitRaw(ring, header: requestHeader(type: BlkType.out, sector: 0), out: [dataA])
        let b = submitRaw(ring, header: requestHeader(type: BlkType.in, sector: 8), inLengths: [4096])
        let firstUsed = try XCTUnwrap(q.waitUsed(), "the read behind the stuck write completed")
        XCTAssertEqual(firstUsed.head, b.head, "completed out of order")
        XCTAssertEqual(q.usedIndex, 1, "the write is still at the disk")

        kill(first.processIdentifier, SIGKILL)
        scratch.thaw()
        first.waitUntilExit()
        XCTAssertEqual(first.terminationReason, .uncaughtSignal)
        _ = fe

        _ = try startDaemon(image: image, socket: socket)
        let (fe2, kick2) = try connect(socket, ram: ram, queue: q, base: q.usedIndex, track: track, inflightFD: &inflightFD)
        defer { withExtendedLifetime(fe2) {} }
        let ring2 = Ring(ram: ram, queue: q, kickFD: kick2)
        kick(kick2)
        var after: [UInt16] = []
        // Whatever the new backend resubmits completes first (C is not yet posted, so A's write, if it is
        // resubmitted, is done before C reads the same sector).
        if let u = q.waitUsed(timeout: 5) { after.append(u.head) }
        let c = submitRaw(ring2, header: requestHeader(type: BlkType.in, sector: 0), inLengths: [4096])
        while let u = q.waitUsed(), after.count < 8 {
            after.append(u.head)
            if u.head == c.head { break }
        }
        return (after, a.head, b.head, c.head, dataA, ram.read(c.ins[0].0, 4096))
    }

    func testRestartedBackendCompletesEachInFlightRequestOnce() throws {
        let r = try killBetweenOutOfOrderCompletions(track: true)
        XCTAssertEqual(r.afterRestart, [r.a, r.c], "A resubmitted once, B not repeated, then C")
        XCTAssertTrue(r.readC == r.dataA, "A's write reached the disk")
        XCTAssertTrue(daemonLog(1).contains("resubmitting 1 request(s)"), daemonLog(1))
    }

    /// The control: without the region, the rewound ring runs B again and A is never completed (the guest would
    /// hang on it). If this stopped failing that way, the test above would prove nothing.
    func testWithoutTrackingTheRewoundRingRepeatsBAndLosesA() throws {
        let r = try killBetweenOutOfOrderCompletions(track: false)
        XCTAssertEqual(r.afterRestart, [r.b, r.c])
        XCTAssertFalse(r.afterRestart.contains(r.a))
    }

    func testInflightRegionIsOfferedAndInitialised() throws {
        let s = try serve(imageSize: 1 << 20)
        let fe = try ackingFrontend(s.socket)
        var d: [UInt8] = []
        d.le(UInt64(0)); d.le(UInt64(0)); d.le(UInt16(1)); d.le(UInt16(128)); d.le(UInt32(0))
        // Without the protocol feature negotiated the message is a protocol error: the connection closes.
        try fe.send(VhostUserFrontend.Request.getInflightFD.rawValue, payload: d)
        XCTAssertTrue(fe.backendClosed())
        let fe2 = try VhostUserFrontend(path: s.socket)
        let pf = try fe2.getU64(.getProtocolFeatures)
        try fe2.setProtocolFeatures(pf & ((1 << 3) | InflightTests.inflightFeature))
        let (reply, fd) = try fe2.callReceivingFD(VhostUserFrontend.Request.getInflightFD.rawValue, payload: d)
        let f = try XCTUnwrap(fd)
        defer { close(f) }
        let region = InflightMemory.regionSize(queueSize: 128)
        XCTAssertEqual(reply.u64(0), UInt64(region))
        var st = stat()
        XCTAssertEqual(fstat(f, &st), 0)
        XCTAssertEqual(Int(st.st_size), region)
        let p = try XCTUnwrap(mmap(nil, region, PROT_READ, MAP_SHARED, f, 0))
        defer { munmap(p, region) }
        // Zeroed: version 0 until a ring first uses it (then a fresh region cannot move the ring's base).
        XCTAssertEqual(p.load(fromByteOffset: 8, as: UInt16.self), 0, "version")
        // A region for more queues than the device has is refused: the connection closes (no reply to wait for).
        var big: [UInt8] = []
        big.le(UInt64(0)); big.le(UInt64(0)); big.le(UInt16(65)); big.le(UInt16(128)); big.le(UInt32(0))
        XCTAssertThrowsError(try fe2.callReceivingFD(VhostUserFrontend.Request.getInflightFD.rawValue, payload: big))
        XCTAssertTrue(logs.all.contains { $0.contains("in-flight region for 65 queues") }, "\(logs.all)")
    }
}
