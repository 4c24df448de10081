#if canImport(Glibc)
import Glibc
#endif
import Blk
import Exports
import Logging
import VhostUserTestSupport
import Virtio
import XCTest

/// The VDUSE transport against a scripted kernel: what a real kernel rarely does (IOTLB invalidation while a
/// queue runs, an unknown request type, a bad queue index) and the ordinary start, I/O and reset.
final class VduseTransportTests: XCTestCase {
    var dir: String!
    var pollers: PollerGroup!
    var export: VduseExport?
    let logs = LogStore()
    var ram: GuestRAM!
    var kernel: FakeVduseKernel!
    var driver: DriverVirtqueue!
    var image: String { "\(dir!)/disk.img" }

    /// IOVA layout: rings in the first 64 KiB, request buffers in the rest.
    static let iovaBase: UInt64 = 0x10_0000
    static let ringArea: UInt64 = 64 << 10
    static let ramSize: UInt64 = 1 << 20
    static let status: UInt8 = VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK

    override func setUpWithError() throws {
        try super.setUpWithError()
        dir = try makeTemporaryDirectory("/tmp/vdevd-vduse-")
        let fd = open(image, O_CREAT | O_RDWR, 0o600)
        XCTAssertEqual(ftruncate(fd, 1 << 20), 0)
        close(fd)
        pollers = try PollerGroup(count: 1)
        ram = try GuestRAM(size: Self.ramSize, guestAddress: Self.iovaBase, name: "iova-space")
        driver = DriverVirtqueue(ram: ram, size: 16)
        // Everything allocated from here on (request buffers) lies past the ring area.
        _ = ram.allocate(1, alignment: Self.ringArea)
        kernel = try FakeVduseKernel(ram: ram, queues: 1)
        kernel.entries = [
            VduseIOTLBEntry(start: Self.iovaBase, last: Self.iovaBase + Self.ringArea - 1, offset: 0, writable: true),
            VduseIOTLBEntry(start: Self.iovaBase + Self.ringArea, last: Self.iovaBase + Self.ramSize / 2 - 1,
                            offset: Self.ringArea, writable: true),
        ]
        kernel.queueInfos[0] = VduseQueueInfo(num: 16, descriptorTable: driver.descGPA, driverArea: driver.availGPA,
                                              deviceArea: driver.usedGPA, availIndex: 0, ready: true)
    }

    override func tearDown() {
        export?.stop()
        export = nil
        pollers?.stopAll()
        pollers = nil
        if let dir { try? FileManager.default.removeItem(atPath: dir) }
        if let run = testRun, run.totalFailureCount > 0 {
            print("---- export log of \(name) ----")
            for l in logs.all { print(l) }
        }
        super.tearDown()
    }

    func serve(readonly: Bool = false, inflight: InflightMemory? = nil, takingOver: Bool = false) throws -> VduseExport {
        var o = BlkOptions(id: "v0", path: image)
        o.readonly = readonly
        let device = try BlkDevice(options: o)
        let store = logs
        let e = try VduseExport(id: "v0", name: "fake0", device: device, kernel: kernel, inflight: inflight,
                                takingOver: takingOver, pollers: pollers, preferredPoller: nil,
                                logger: Logger(label: "vduse-test") { _ in CaptureLogHandler(store: store) })
        // What the driver accepts: everything offered but EVENT_IDX (the test driver does not use it).
        kernel.features = VduseExport.offeredFeatures(device, refused: BlkFeature.configWCE) & ~VirtioFeature.ringEventIdx
        e.start()
        export = e
        return e
    }

    func driverOK() {
        XCTAssertEqual(kernel.setStatus(Self.status)?.ok, true)
        XCTAssertEqual(kernel.setStatus(Self.status | VirtioStatus.driverOK)?.ok, true)
    }

    /// One blk request through the ring: returns its status byte and, for a read, the bytes read. `at` places the
    /// buffers at an IOVA other than where the test writes them (a remapped IOTLB entry): (iova, ram address).
    func request(type: UInt32, sector: UInt64, data: [UInt8] = [], readLength: Int = 0,
                 remap: (iova: UInt64, ram: UInt64)? = nil) -> (status: UInt8?, read: [UInt8]) {
        let total = UInt64(16 + data.count + readLength + 1)
        let where_ = ram.allocate(total, alignment: 512)
        let shift: (UInt64) -> UInt64 = { a in remap.map { a - $0.ram + $0.iova } ?? a }
        var hdr = [UInt8]()
        withUnsafeBytes(of: type.littleEndian) { hdr += $0 }
        hdr += [0, 0, 0, 0]
        withUnsafeBytes(of: sector.littleEndian) { hdr += $0 }
        ram.write(where_, hdr)
        var bufs = [DriverVirtqueue.Buffer(gpa: shift(where_), length: 16, writable: false)]
        if !data.isEmpty {
            ram.write(where_ + 16, data)
            bufs.append(.init(gpa: shift(where_ + 16), length: UInt32(data.count), writable: false))
        }
        if readLength > 0 { bufs.append(.init(gpa: shift(where_ + 16), length: UInt32(readLength), writable: true)) }
        let statusAt = where_ + 16 + UInt64(data.count + readLength)
        ram.write(statusAt, [0xff])
        bufs.append(.init(gpa: shift(statusAt), length: 1, writable: true))
        _ = driver.add(bufs)
        kernel.kick(0)
        guard driver.waitUsed(timeout: 10) != nil else { return (nil, []) }
        return (ram.read(statusAt, 1)[0], readLength > 0 ? ram.read(where_ + 16, readLength) : [])
    }

    func fileBytes(_ offset: Int, _ count: Int) -> [UInt8] {
        let fd = open(image, O_RDONLY)
        defer { close(fd) }
        var b = [UInt8](repeating: 0, count: count)
        _ = pread(fd, &b, count, off_t(offset))
        return b
    }

    func testDriverOKStartsTheQueueAndIOReachesTheFile() throws {
        let e = try serve()
        driverOK()
        XCTAssertNotNil(e.snapshot.queues[0].poller, "queue 0 not running after DRIVER_OK")
        let pattern = (0..<4096).map { UInt8(truncatingIfNeeded: $0 * 7 + 1) }
        XCTAssertEqual(request(type: 1, sector: 8, data: pattern).status, 0)
        XCTAssertEqual(fileBytes(8 * 512, 4096), pattern)
        let back = request(type: 0, sector: 8, readLength: 4096)
        XCTAssertEqual(back.status, 0)
        XCTAssertEqual(back.read, pattern)
        XCTAssertGreaterThan(kernel.calls[0].drain(), 0, "no interrupt injected")
        XCTAssertEqual(e.snapshot.queues[0].counters["requests"], 2)
    }

    func testReadonlyDeviceRefusesWrites() throws {
        _ = try serve(readonly: true)
        driverOK()
        XCTAssertEqual(request(type: 1, sector: 0, data: [UInt8](repeating: 9, count: 512)).status, 1) // VIRTIO_BLK_S_IOERR
        XCTAssertEqual(fileBytes(0, 512), [UInt8](repeating: 0, count: 512))
    }

    func testIOTLBInvalidationWhileTheQueueRunsIsFollowedOnTheNextRequest() throws {
        let e = try serve()
        driverOK()
        let first = [UInt8](repeating: 0xa1, count: 512)
        XCTAssertEqual(request(type: 1, sector: 1, data: first).status, 0)
        let lookupsBefore = kernel.iotlbLookups
        // The kernel moves the buffer range to the upper half of its file and tells the backend.
        let bufferStart = Self.iovaBase + Self.ringArea
        kernel.removeEntry(start: bufferStart)
        kernel.script { $0.entries.append(VduseIOTLBEntry(start: bufferStart, last: Self.iovaBase + Self.ramSize / 2 - 1,
                                                        offset: Self.ramSize / 2, writable: true)) }
        XCTAssertEqual(kernel.send(.updateIOTLB, start: bufferStart, last: Self.iovaBase + Self.ramSize / 2 - 1)?.ok, true)
        XCTAssertNotNil(e.snapshot.queues[0].poller, "the queue stopped at UPDATE_IOTLB")
        // The driver's buffers now lie in the upper half of the file but keep IOVAs in the buffer range.
        _ = ram.allocate(1, alignment: Self.ramSize / 2)
        let upper = ram.allocate(0, alignment: 512)
        let second = [UInt8](repeating: 0xb2, count: 512)
        let r = request(type: 1, sector: 2, data: second, remap: (iova: bufferStart + (upper - Self.iovaBase - Self.ramSize / 2), ram: upper))
        XCTAssertEqual(r.status, 0)
        XCTAssertEqual(fileBytes(2 * 512, 512), second, "the request was not read through the new mapping")
        XCTAssertEqual(fileBytes(512, 512), first)
        XCTAssertGreaterThan(kernel.iotlbLookups, lookupsBefore, "the invalidated range was never looked up again")
    }

    func testUnknownRequestTypeIsAnsweredFailedAndServingGoesOn() throws {
        _ = try serve()
        XCTAssertEqual(kernel.send(VduseRequest.Kind(rawValue: 9))?.ok, false)
        driverOK()
        XCTAssertEqual(request(type: 1, sector: 0, data: [UInt8](repeating: 1, count: 512)).status, 0)
        XCTAssertTrue(logs.contains("unknown VDUSE request type 9"))
    }

    func testGetVQStateOfABadQueueIndexFailsAndOfAGoodOneIsItsAvailIndex() throws {
        _ = try serve()
        XCTAssertEqual(kernel.send(.getVQState, queue: 1)?.ok, false)
        XCTAssertEqual(kernel.send(.getVQState, queue: 0xffff_ffff)?.ok, false)
        driverOK()
        for s in 0..<3 { XCTAssertEqual(request(type: 1, sector: UInt64(s), data: [UInt8](repeating: 3, count: 512)).status, 0) }
        let state = kernel.send(.getVQState, queue: 0)
        XCTAssertEqual(state?.ok, true)
        XCTAssertEqual(state?.queue, 0)
        XCTAssertEqual(state?.availIndex, 3)
    }

    func testRingOutsideEveryIOTLBEntryFailsDriverOK() throws {
        kernel.queueInfos[0].descriptorTable = 0x4000_0000
        let e = try serve()
        XCTAssertEqual(kernel.setStatus(Self.status)?.ok, true)
        XCTAssertEqual(kernel.setStatus(Self.status | VirtioStatus.driverOK)?.ok, false)
        XCTAssertNil(e.snapshot.queues[0].poller)
    }

    func testStatusZeroStopsTheQueueAndForgetsMappings() throws {
        let e = try serve()
        driverOK()
        XCTAssertEqual(request(type: 1, sector: 0, data: [UInt8](repeating: 5, count: 512)).status, 0)
        XCTAssertEqual(kernel.setStatus(0)?.ok, true)
        XCTAssertNil(e.snapshot.queues[0].poller)
        XCTAssertFalse(e.snapshot.connected)
        // The kick fd is deassigned: the kernel no longer signals a queue that is gone.
        XCTAssertNil(kernel.kickFD(0))
    }

    /// Submits a write without waiting for it (no backend may be serving); returns where its status byte is.
    func submitWrite(sector: UInt64, data: [UInt8]) -> UInt64 {
        let at = ram.allocate(UInt64(16 + data.count + 1), alignment: 512)
        var hdr = [UInt8]()
        withUnsafeBytes(of: UInt32(1).littleEndian) { hdr += $0 }
        hdr += [0, 0, 0, 0]
        withUnsafeBytes(of: sector.littleEndian) { hdr += $0 }
        ram.write(at, hdr)
        ram.write(at + 16, data)
        ram.write(at + 16 + UInt64(data.count), [0xff])
        _ = driver.add([.init(gpa: at, length: 16, writable: false),
                        .init(gpa: at + 16, length: UInt32(data.count), writable: false),
                        .init(gpa: at + 16 + UInt64(data.count), length: 1, writable: true)])
        return at + 16 + UInt64(data.count)
    }

    func testATakenOverDeviceResumesAtTheUsedIndexAndServesWhatWaited() throws {
        let record = try VduseExport.inflightRecord("\(dir!)/record", fresh: true, queues: 1, queueSize: 256)
        let first = try serve(inflight: record)
        driverOK()
        XCTAssertEqual(request(type: 1, sector: 0, data: [UInt8](repeating: 0x11, count: 512)).status, 0)
        XCTAssertEqual(request(type: 1, sector: 1, data: [UInt8](repeating: 0x22, count: 512)).status, 0)
        // vdevd goes away while the driver keeps the device; the driver queues a request nobody serves yet, and
        // overwrites the first two sectors behind the device's back: a backend that restarted at avail index 0
        // would write them again.
        first.stop()
        export = nil
        let fd = open(image, O_RDWR)
        XCTAssertEqual(pwrite(fd, [UInt8](repeating: 0x99, count: 1024), 1024, 0), 1024)
        close(fd)
        let status = submitWrite(sector: 2, data: [UInt8](repeating: 0x33, count: 512))
        kernel.kick(0)
        // A new vdevd takes the device over: no SET_STATUS comes, the queue is found ready.
        let again = try VduseExport.inflightRecord("\(dir!)/record", fresh: false, queues: 1, queueSize: 256)
        let second = try serve(inflight: again, takingOver: true)
        XCTAssertNotNil(driver.waitUsed(timeout: 10), "the waiting request was not served after the takeover")
        XCTAssertEqual(ram.read(status, 1)[0], 0)
        XCTAssertEqual(fileBytes(2 * 512, 512), [UInt8](repeating: 0x33, count: 512))
        XCTAssertEqual(fileBytes(0, 1024), [UInt8](repeating: 0x99, count: 1024), "requests already completed ran again")
        XCTAssertEqual(second.snapshot.queues[0].counters["requests"], 1)
        // A request answered by the loop comes after the takeover finished there: the status it set is visible.
        XCTAssertEqual(kernel.send(.getVQState, queue: 9)?.ok, false)
        XCTAssertTrue(second.snapshot.connected)
        XCTAssertTrue(logs.contains("taking over a running device"))
    }

    func testTakingOverADeviceNoDriverUsesWaitsForDriverOK() throws {
        kernel.queueInfos[0].ready = false
        let e = try serve(takingOver: true)
        XCTAssertEqual(kernel.setStatus(Self.status)?.ok, true)
        XCTAssertNil(e.snapshot.queues[0].poller)
        kernel.queueInfos[0].ready = true
        XCTAssertEqual(kernel.setStatus(Self.status | VirtioStatus.driverOK)?.ok, true)
        XCTAssertEqual(request(type: 1, sector: 0, data: [UInt8](repeating: 7, count: 512)).status, 0)
    }

    func testOfferedFeaturesCarryAccessPlatformAndNoWritableConfig() throws {
        let device = try BlkDevice(options: BlkOptions(id: "v0", path: image))
        let f = VduseExport.offeredFeatures(device, refused: BlkFeature.configWCE)
        XCTAssertEqual(f, (BlkDevice.features & ~BlkFeature.configWCE) | VirtioFeature.accessPlatform)
        XCTAssertNotEqual(f & VirtioFeature.version1, 0)
    }
}
