#if canImport(Glibc)
import Glibc
#endif

/// A virtio-blk driver over the test frontend: negotiates like QEMU + Linux, then issues requests.
/// Used by protocol tests and by vdev-bench.
public final class BlkTestClient {
    public enum RequestType: UInt32 { case read = 0, write = 1, flush = 4, getID = 8, discard = 11, writeZeroes = 13 }
    public enum Status: UInt8 { case ok = 0, ioerr = 1, unsupp = 2 }

    public let frontend: VhostUserFrontend
    public let ram: GuestRAM
    public private(set) var queues: [DriverVirtqueue] = []
    public private(set) var kicks: [Int32] = []
    public private(set) var calls: [Int32] = []
    public let deviceFeatures: UInt64
    public let protocolFeatures: UInt64
    public private(set) var ackedFeatures: UInt64 = 0

    /// Connects and negotiates; `features` = nil acks everything offered (but VHOST_F_LOG_ALL, which QEMU acks only
    /// while migrating) and protocol-features' own bit is kept. `extraProtocolFeatures` asks for more than QEMU's
    /// usual set (e.g. LOG_SHMFD, bit 1). `ram`: guest RAM made by the caller (another backing), else a memfd.
    public init(socket: String, queueCount: Int = 1, queueSize: UInt16 = 128, ramSize: UInt64 = 64 << 20,
                features: UInt64? = nil, useAddMemReg: Bool = false, preallocateRAM: Bool = false,
                extraProtocolFeatures: UInt64 = 0, ram: GuestRAM? = nil) throws {
        frontend = try VhostUserFrontend(path: socket)
        self.ram = try ram ?? GuestRAM(size: ramSize, guestAddress: 0x1_0000_0000, preallocate: preallocateRAM)
        deviceFeatures = try frontend.getU64(.getFeatures)
        protocolFeatures = try frontend.getU64(.getProtocolFeatures)
        try frontend.setProtocolFeatures(protocolFeatures & ((1 << 0) | (1 << 3) | (1 << 9) | (1 << 13) | (1 << 15) | (1 << 16)
                                                             | extraProtocolFeatures))
        try frontend.command(.setOwner)
        let want = (features ?? (deviceFeatures & ~(1 << 26))) | VhostUserFrontend.protocolFeaturesBit
        ackedFeatures = want & deviceFeatures
        try frontend.setFeatures(ackedFeatures)
        if useAddMemReg { try frontend.addMemReg(self.ram) } else { try frontend.setMemTable([self.ram]) }
        for i in 0..<queueCount {
            let q = DriverVirtqueue(ram: self.ram, size: queueSize)
            q.eventIdx = ackedFeatures & (1 << 29) != 0
            let (k, c) = try frontend.startVring(UInt32(i), q)
            queues.append(q)
            kicks.append(k)
            calls.append(c)
        }
    }

    deinit {
        for f in kicks + calls { close(f) }
    }

    /// Buffers for one request, allocated once and reusable.
    public struct RequestBuffers {
        public let header: UInt64
        public let data: UInt64
        public let dataCapacity: UInt32
        public let status: UInt64
    }

    public func allocateRequest(dataCapacity: UInt32) -> RequestBuffers {
        RequestBuffers(header: ram.allocate(16), data: ram.allocate(UInt64(max(dataCapacity, 16)), alignment: 4096),
                       dataCapacity: dataCapacity, status: ram.allocate(1, alignment: 1))
    }

    /// Queues a request without waiting; returns the chain head.
    @discardableResult
    public func submit(queue: Int = 0, type: RequestType, sector: UInt64, buffers b: RequestBuffers, length: UInt32,
                       indirect: Bool = false, notify: Bool = true) -> UInt16 {
        var h: [UInt8] = []
        h.le(type.rawValue)
        h.le(UInt32(0))
        h.le(sector)
        ram.write(b.header, h)
        ram.write(b.status, [0xff])
        var bufs = [DriverVirtqueue.Buffer(gpa: b.header, length: 16, writable: false)]
        if length > 0 {
            bufs.append(.init(gpa: b.data, length: length, writable: type == .read || type == .getID))
        }
        bufs.append(.init(gpa: b.status, length: 1, writable: true))
        let head = queues[queue].add(bufs, indirect: indirect)
        if notify { kick(kicks[queue]) }
        return head
    }

    /// One request, waited for. Returns the status byte and the used length.
    public func run(queue: Int = 0, type: RequestType, sector: UInt64, data: [UInt8] = [], readLength: UInt32 = 0,
                    indirect: Bool = false) throws -> (status: UInt8, used: UInt32, data: [UInt8]) {
        let len = type == .read || type == .getID ? readLength : UInt32(data.count)
        let b = allocateRequest(dataCapacity: len)
        if !data.isEmpty { ram.write(b.data, data) }
        let head = submit(queue: queue, type: type, sector: sector, buffers: b, length: len, indirect: indirect)
        guard let u = queues[queue].waitUsed() else { throw TestSupportError("request timed out") }
        guard u.head == head else { throw TestSupportError("used head \(u.head), expected \(head)") }
        let out = type == .read || type == .getID ? ram.read(b.data, Int(len)) : []
        return (ram.read(b.status, 1)[0], u.length, out)
    }

    public func read(sector: UInt64, count: Int, queue: Int = 0) throws -> (UInt8, [UInt8]) {
        let r = try run(queue: queue, type: .read, sector: sector, readLength: UInt32(count))
        return (r.status, r.data)
    }

    public func write(sector: UInt64, data: [UInt8], queue: Int = 0) throws -> UInt8 {
        try run(queue: queue, type: .write, sector: sector, data: data).status
    }

    /// DISCARD or WRITE_ZEROES with one or more (sector, count, flags) ranges.
    public func ranges(_ type: RequestType, _ ranges: [(UInt64, UInt32, UInt32)], queue: Int = 0) throws -> UInt8 {
        var p: [UInt8] = []
        for (s, n, f) in ranges {
            p.le(s)
            p.le(n)
            p.le(f)
        }
        return try run(queue: queue, type: type, sector: 0, data: p).status
    }
}
