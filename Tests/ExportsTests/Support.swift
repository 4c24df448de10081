#if canImport(Glibc)
import Glibc
#endif
import Blk
import CVdevd
import Exports
import Foundation
import Logging
import VhostUserTestSupport
import Virtio
import XCTest

// MARK: - image files

/// Deterministic image content: every byte depends on its offset, every sector differs from its neighbours.
func imageByte(_ offset: Int) -> UInt8 { UInt8(truncatingIfNeeded: (offset &* 7) ^ (offset >> 9) ^ 0x5a) }

func imageBytes(_ offset: Int, _ count: Int) -> [UInt8] { (offset..<(offset + count)).map(imageByte) }

/// Bytes unlike the image's, for writes.
func payload(_ count: Int, seed: UInt8) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ Int(seed) &* 101 &+ 1) | 0x01 }
}

func createImage(at path: String, size: Int) throws {
    var data = [UInt8](repeating: 0, count: size)
    for i in 0..<size { data[i] = imageByte(i) }
    let fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0o644)
    guard fd >= 0 else { throw TestSupportError("create \(path): errno \(errno)") }
    defer { close(fd) }
    var off = 0
    while off < size {
        let n = data.withUnsafeBytes { pwrite(fd, $0.baseAddress! + off, size - off, off_t(off)) }
        guard n > 0 else { throw TestSupportError("write \(path): errno \(errno)") }
        off += n
    }
    // Allocated on disk (not delayed), so st_blocks reflects real allocation before any discard.
    fsync(fd)
}

/// pread from the image, bypassing the device.
func readFile(_ path: String, offset: Int, count: Int) throws -> [UInt8] {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { throw TestSupportError("open \(path): errno \(errno)") }
    defer { close(fd) }
    var buf = [UInt8](repeating: 0, count: count)
    var done = 0
    while done < count {
        let n = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, count - done, off_t(offset + done)) }
        guard n > 0 else { break }
        done += n
    }
    return Array(buf.prefix(done))
}

func fileContents(_ path: String) throws -> Data {
    try Data(contentsOf: URL(fileURLWithPath: path))
}

func fileStat(_ path: String) -> stat? {
    var st = stat()
    return lstat(path, &st) == 0 ? st : nil
}

/// 512-byte blocks allocated to the file.
func allocatedBlocks(_ path: String) -> Int { Int(fileStat(path)?.st_blocks ?? -1) }

func isSocket(_ path: String) -> Bool {
    guard let st = fileStat(path) else { return false }
    return st.st_mode & S_IFMT == S_IFSOCK
}

// MARK: - config space (struct virtio_blk_config, offsets from <linux/virtio_blk.h>)

struct BlkConfig {
    let raw: [UInt8]
    init(_ raw: [UInt8]) { self.raw = raw }
    var capacity: UInt64 { raw.u64(0) }
    var sizeMax: UInt32 { raw.u32(8) }
    var segMax: UInt32 { raw.u32(12) }
    var blkSize: UInt32 { raw.u32(20) }
    var physicalBlockExp: UInt8 { raw[24] }
    var minIOSize: UInt16 { UInt16(raw[26]) | UInt16(raw[27]) << 8 }
    var writeback: UInt8 { raw[32] }
    var numQueues: UInt16 { UInt16(raw[34]) | UInt16(raw[35]) << 8 }
    var maxDiscardSectors: UInt32 { raw.u32(36) }
    var maxDiscardSeg: UInt32 { raw.u32(40) }
    var discardSectorAlignment: UInt32 { raw.u32(44) }
    var maxWriteZeroesSectors: UInt32 { raw.u32(48) }
    var maxWriteZeroesSeg: UInt32 { raw.u32(52) }
    var writeZeroesMayUnmap: UInt8 { raw[56] }
}

// MARK: - raw requests on a ring

/// A started ring the test drives by hand: its RAM, the driver side and the kick eventfd the backend watches.
struct Ring {
    let ram: GuestRAM
    let queue: DriverVirtqueue
    let kickFD: Int32

    init(ram: GuestRAM, queue: DriverVirtqueue, kickFD: Int32) {
        self.ram = ram
        self.queue = queue
        self.kickFD = kickFD
    }

    init(_ c: BlkTestClient, _ q: Int = 0) {
        self.init(ram: c.ram, queue: c.queues[q], kickFD: c.kicks[q])
    }
}

struct RawResult {
    let status: UInt8
    let used: UInt32
    let data: [UInt8]
}

enum BlkType {
    static let `in`: UInt32 = 0
    static let out: UInt32 = 1
    static let flush: UInt32 = 4
    static let getID: UInt32 = 8
    static let discard: UInt32 = 11
    static let writeZeroes: UInt32 = 13
}

enum Status {
    static let ok: UInt8 = 0
    static let ioerr: UInt8 = 1
    static let unsupp: UInt8 = 2
}

func requestHeader(type: UInt32, sector: UInt64) -> [UInt8] {
    var h: [UInt8] = []
    h.le(type)
    h.le(UInt32(0))
    h.le(sector)
    return h
}

func rangesPayload(_ ranges: [(UInt64, UInt32, UInt32)]) -> [UInt8] {
    var p: [UInt8] = []
    for (s, n, f) in ranges {
        p.le(s)
        p.le(n)
        p.le(f)
    }
    return p
}

/// Makes a chain available without waiting: header, device-readable segments, device-writable segments, and
/// a status byte (unless `withStatus` is false). Returns the head, the writable buffers and the status address.
/// `bufferOffset` places every data buffer that many bytes past a 4 KiB boundary (0: 512-byte aligned).
func submitRaw(_ r: Ring, header: [UInt8], out: [[UInt8]] = [], inLengths: [UInt32] = [], indirect: Bool = false,
               withStatus: Bool = true, notify: Bool = true,
               bufferOffset: UInt64 = 0) -> (head: UInt16, ins: [(UInt64, UInt32)], status: UInt64?) {
    func buffer(_ length: Int) -> UInt64 {
        bufferOffset == 0 ? r.ram.allocate(UInt64(length), alignment: 512)
                          : r.ram.allocate(UInt64(length) + bufferOffset, alignment: 4096) + bufferOffset
    }
    let hdr = r.ram.allocate(UInt64(max(header.count, 1)))
    r.ram.write(hdr, header)
    var bufs = [DriverVirtqueue.Buffer(gpa: hdr, length: UInt32(header.count), writable: false)]
    for o in out {
        let g = buffer(o.count)
        r.ram.write(g, o)
        bufs.append(.init(gpa: g, length: UInt32(o.count), writable: false))
    }
    var ins: [(UInt64, UInt32)] = []
    for l in inLengths {
        let g = buffer(Int(l))
        r.ram.fill(g, Int(l), byte: 0xee)
        ins.append((g, l))
        bufs.append(.init(gpa: g, length: l, writable: true))
    }
    var st: UInt64?
    if withStatus {
        let s = r.ram.allocate(1, alignment: 1)
        r.ram.write(s, [0xff])
        bufs.append(.init(gpa: s, length: 1, writable: true))
        st = s
    }
    let head = r.queue.add(bufs, indirect: indirect)
    if notify { kick(r.kickFD) }
    return (head, ins, st)
}

/// One request, waited for (the wait's timeout is a safety net, not an assertion).
func rawRequest(_ r: Ring, type: UInt32, sector: UInt64, out: [[UInt8]] = [], inLengths: [UInt32] = [],
                indirect: Bool = false, bufferOffset: UInt64 = 0) throws -> RawResult {
    let s = submitRaw(r, header: requestHeader(type: type, sector: sector), out: out, inLengths: inLengths,
                      indirect: indirect, bufferOffset: bufferOffset)
    guard let u = r.queue.waitUsed() else { throw TestSupportError("request type \(type) was never completed") }
    guard u.head == s.head else { throw TestSupportError("used head \(u.head), expected \(s.head)") }
    let data = s.ins.flatMap { r.ram.read($0.0, Int($0.1)) }
    return RawResult(status: r.ram.read(s.status!, 1)[0], used: u.length, data: data)
}

/// Waits until an eventfd is readable (safety-net timeout), then returns its counter.
func waitEventFD(_ fd: Int32, timeout: Double = 10) -> UInt64 {
    var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    guard poll(&p, 1, Int32(timeout * 1000)) > 0 else { return 0 }
    return drainEventFD(fd)
}

// MARK: - base test case

/// One served export as a test sees it.
struct Served {
    let export: VhostUserExport
    let image: String
    let socket: String

    func requests(_ q: Int) -> UInt64 { export.queueStats[q].get(.requests) }
    func counter(_ c: QueueStats.Counter, _ q: Int = 0) -> UInt64 { export.queueStats[q].get(c) }
}

class ExportTestCase: XCTestCase {
    var dir: String!
    var pollers: PollerGroup?
    var exports: [Export] = []
    var fdsToClose: [Int32] = []
    let logs = LogStore()

    override func setUpWithError() throws {
        try super.setUpWithError()
        dir = try makeTemporaryDirectory("/tmp/vdevd-xt-")
    }

    override func tearDown() {
        for e in exports.reversed() { e.stop() }
        exports.removeAll()
        for f in fdsToClose { close(f) }
        fdsToClose.removeAll()
        pollers?.stopAll()
        pollers = nil
        if let dir { try? FileManager.default.removeItem(atPath: dir) }
        if let run = testRun, run.totalFailureCount > 0 {
            print("---- export log of \(name) ----")
            for l in logs.all { print(l) }
        }
        super.tearDown()
    }

    var logger: Logger {
        let store = logs
        return Logger(label: "vdevd-test") { _ in CaptureLogHandler(store: store) }
    }

    /// Entries of each poller's io_uring submission queue (its completion queue has four times as many).
    var ringEntries: UInt32 = 1024

    func pollerGroup() throws -> PollerGroup {
        if let p = pollers { return p }
        let p = try PollerGroup(count: 1, ringEntries: ringEntries)
        pollers = p
        return p
    }

    func path(_ name: String) -> String { "\(dir!)/\(name)" }

    /// Creates an image (unless `image` names an existing file) and serves it; `options` is appended to the spec.
    func serve(id: String = "disk0", options: String = "", imageSize: Int = 8 << 20, image: String? = nil,
               socket: String? = nil, imagePath: String? = nil) throws -> Served {
        let img = image ?? imagePath ?? path("\(id).img")
        if image == nil { try createImage(at: img, size: imageSize) }
        let sock = socket ?? path("\(id).sock")
        var text = "vhost-user-blk,id=\(id),path=\(img),socket=\(sock)"
        if !options.isEmpty { text += "," + options }
        let spec = try ExportSpec.parse(text)
        let e = try ExportFactory.make(spec, pollers: try pollerGroup(), logger: logger)
        e.start()
        exports.append(e)
        guard let v = e as? VhostUserExport else { throw TestSupportError("not a VhostUserExport") }
        return Served(export: v, image: img, socket: sock)
    }

    /// A frontend that has negotiated protocol features with REPLY_ACK but set up nothing else.
    func ackingFrontend(_ socket: String) throws -> VhostUserFrontend {
        let fe = try VhostUserFrontend(path: socket)
        let pf = try fe.getU64(.getProtocolFeatures)
        try fe.setProtocolFeatures(pf & (VhostUserProtocolFeature.replyAck | VhostUserProtocolFeature.mq
                                             | VhostUserProtocolFeature.config | VhostUserProtocolFeature.configureMemSlots
                                             | VhostUserProtocolFeature.resetDevice | VhostUserProtocolFeature.status))
        XCTAssertTrue(fe.replyAck)
        return fe
    }

    /// Stops ring `q` of a client, gives it an error eventfd (SET_VRING_ERR) and starts it again where it was.
    /// Returns the restarted ring (with its new kick fd) and the error fd the backend signals if the guest
    /// breaks a ring rule.
    func armErrorFD(_ c: BlkTestClient, _ q: Int) throws -> (ring: Ring, err: Int32) {
        let base = try c.frontend.getVringBase(UInt32(q))
        let err = vdv_eventfd(0, 1)
        fdsToClose.append(err)
        XCTAssertEqual(try c.frontend.command(.setVringErr, payload: c.frontend.u64Payload(UInt64(q)), fds: [err]), 0)
        let (k, call) = try c.frontend.startVring(UInt32(q), c.queues[q], base: base)
        fdsToClose += [k, call]
        return (Ring(ram: c.ram, queue: c.queues[q], kickFD: k), err)
    }

    /// Waits for something another thread does (the timeout is a safety net, not an assertion about time).
    func eventually(_ timeout: Double = 10, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition() { return true }
            usleep(1000)
        }
        return condition()
    }

    func config(_ fe: VhostUserFrontend) throws -> BlkConfig {
        BlkConfig(try fe.getConfig(offset: 0, size: UInt32(BlkLayout.configSize)))
    }
}

/// Runs `body`; what it says cannot be made on this machine (`Unavailable`) skips the test with the reason.
func skipUnavailable<T>(_ body: () throws -> T) throws -> T {
    do { return try body() } catch let e as Unavailable { throw XCTSkip(e.description) }
}

extension VhostUserFrontend {
    /// SET_MEM_TABLE with these regions; the backend's answer (0: accepted) when REPLY_ACK is on.
    func memTableAck(_ rams: [GuestRAM]) throws -> UInt64? {
        var p: [UInt8] = []
        p.le(UInt32(rams.count))
        p.le(UInt32(0))
        for r in rams { p += regionPayload(r) }
        return try command(.setMemTable, payload: p, fds: rams.map(\.fd))
    }
}
