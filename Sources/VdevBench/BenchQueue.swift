#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import VhostUserTestSupport

/// One queue's worth of load: `iodepth` fixed 3-descriptor chains (header, data, status) that are re-posted
/// as they complete. Busy-polls the used ring so the benchmark is never the thing being measured.
final class BenchQueue {
    enum Mode { case read, write, mixed }

    let q: DriverVirtqueue
    let kickFD: Int32
    let ram: GuestRAM
    let iodepth: Int
    let blockSize: UInt32
    let sectors: UInt64          // device size in 512-byte sectors (usable range)
    let mode: Mode
    let sequential: Bool
    let verify: Bool
    var headers: [UInt64] = []
    var datas: [UInt64] = []
    var statuses: [UInt64] = []
    var started: [UInt64] = []
    var isWrite: [Bool] = []
    var lba: [UInt64] = []
    var hist = Histogram()
    var errors: UInt64 = 0
    var verifyErrors: UInt64 = 0
    var completed: UInt64 = 0
    var bytes: UInt64 = 0
    var rng: UInt64
    var nextSeq: UInt64 = 0
    static let magic: UInt64 = 0x7664_6576_6462_656e

    init(q: DriverVirtqueue, kick: Int32, ram: GuestRAM, iodepth: Int, blockSize: UInt32, sectors: UInt64,
         mode: Mode, sequential: Bool, verify: Bool, seed: UInt64) {
        self.q = q
        self.kickFD = kick
        self.ram = ram
        self.iodepth = iodepth
        self.blockSize = blockSize
        self.sectors = sectors
        self.mode = mode
        self.sequential = sequential
        self.verify = verify
        rng = seed | 1
        nextSeq = (seed % max(1, sectors / UInt64(blockSize / 512))) * UInt64(blockSize / 512)
        for i in 0..<iodepth {
            let h = ram.allocate(16), d = ram.allocate(UInt64(blockSize), alignment: 4096), s = ram.allocate(1, alignment: 1)
            headers.append(h)
            datas.append(d)
            statuses.append(s)
            ram.fill(d, Int(blockSize), byte: 0xa5)
            q.writeDescriptor(UInt16(3 * i), addr: h, len: 16, flags: 1, next: UInt16(3 * i + 1))
            q.writeDescriptor(UInt16(3 * i + 1), addr: d, len: blockSize, flags: 1, next: UInt16(3 * i + 2))
            q.writeDescriptor(UInt16(3 * i + 2), addr: s, len: 1, flags: 2, next: 0)
        }
        started = Array(repeating: 0, count: iodepth)
        isWrite = Array(repeating: false, count: iodepth)
        lba = Array(repeating: 0, count: iodepth)
    }

    @inline(__always) func nextRandom() -> UInt64 {
        rng ^= rng << 13
        rng ^= rng >> 7
        rng ^= rng << 17
        return rng
    }

    @inline(__always) func post(_ i: Int) {
        let perBlock = UInt64(blockSize / 512)
        let blocks = max(1, sectors / perBlock)
        let sector: UInt64
        if sequential {
            sector = nextSeq
            nextSeq += perBlock
            if nextSeq + perBlock > blocks * perBlock { nextSeq = 0 }
        } else {
            sector = (nextRandom() % blocks) * perBlock
        }
        let write: Bool
        switch mode {
        case .read: write = false
        case .write: write = true
        case .mixed: write = nextRandom() & 1 == 0
        }
        let hp = ram.pointer(headers[i])
        hp.storeBytes(of: UInt32(write ? 1 : 0), as: UInt32.self)
        hp.storeBytes(of: UInt32(0), toByteOffset: 4, as: UInt32.self)
        hp.storeBytes(of: sector, toByteOffset: 8, as: UInt64.self)
        // The data descriptor's direction follows the request type.
        let dp = ram.pointer(q.descGPA + UInt64(3 * i + 1) * 16)
        dp.storeBytes(of: UInt16(write ? 1 : 3), toByteOffset: 12, as: UInt16.self)
        if write && verify {
            let d = ram.pointer(datas[i])
            for k in 0..<Int(perBlock) {
                d.storeBytes(of: BenchQueue.magic, toByteOffset: k * 512, as: UInt64.self)
                d.storeBytes(of: sector + UInt64(k), toByteOffset: k * 512 + 8, as: UInt64.self)
            }
        }
        ram.pointer(statuses[i]).storeBytes(of: UInt8(0xff), as: UInt8.self)
        isWrite[i] = write
        lba[i] = sector
        started[i] = nowNanos()
        q.publish(UInt16(3 * i))
    }

    private var inflight = 0
    private var stopping = false

    /// Posts the first `iodepth` requests.
    func start() {
        let old = q.availIndex
        for i in 0..<iodepth { post(i) }
        inflight = iodepth
        if q.needsKick(since: old) { kick(kickFD) }
    }

    /// Reaps what completed and re-posts until `deadline` (CLOCK_MONOTONIC ns); false once drained.
    @inline(__always)
    func step(deadline: UInt64) -> Bool {
        let old = q.availIndex
        var reposted = false
        while let u = q.popUsedFixed() {
            let i = Int(u.head) / 3
            let t = nowNanos()
            hist.record(t &- started[i])
            if ram.pointer(statuses[i]).load(as: UInt8.self) != 0 { errors += 1 } else {
                completed += 1
                bytes += UInt64(blockSize)
                if verify && !isWrite[i] { check(i) }
            }
            if !stopping && t >= deadline { stopping = true }
            if stopping { inflight -= 1 } else { post(i); reposted = true }
        }
        if reposted && q.needsKick(since: old) { kick(kickFD) }
        return inflight > 0
    }

    /// A sector that carries our stamp must carry its own LBA: catches misdirected or torn I/O.
    func check(_ i: Int) {
        let d = ram.pointer(datas[i])
        for k in 0..<Int(blockSize / 512) where d.load(fromByteOffset: k * 512, as: UInt64.self) == BenchQueue.magic {
            if d.load(fromByteOffset: k * 512 + 8, as: UInt64.self) != lba[i] + UInt64(k) { verifyErrors += 1 }
        }
    }
}

@inline(__always) func nowNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
