#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import VhostUserTestSupport
import Virtio

/// vdev-bench: drives any vhost-user-blk socket (vdevd, qemu-storage-daemon, SPDK) as a guest would.
struct VdevBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vdev-bench",
        abstract: "Load generator for vhost-user backends: plays QEMU and the guest driver over the socket.",
        subcommands: [BlkBench.self, VsockBench.self],
        defaultSubcommand: BlkBench.self)
}

/// Block I/O against any vhost-user-blk socket (vdevd, qemu-storage-daemon).
struct BlkBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "blk",
        abstract: "Block I/O load against a vhost-user-blk socket (the default subcommand).")

    @Option(help: "vhost-user-blk socket to drive (repeatable: several exports at once).") var socket: [String]
    @Option(help: "randread, randwrite, read, write or randrw.") var rw: String = "randread"
    @Option(help: "Block size in bytes (suffix k or m allowed).") var bs: String = "4k"
    @Option(help: "Requests in flight per queue.") var iodepth: Int = 1
    @Option(help: "Queues per socket.") var queues: Int = 1
    @Option(help: "Driver threads; the queues of all sockets are spread over them (default: one per queue).") var threads: Int?
    @Option(help: "Set up the rings, then stay idle this many seconds with no I/O (for idle-CPU measurements).") var idle: Double?
    @Option(help: "Run time in seconds.") var seconds: Double = 5
    @Option(help: "Use only the first N MiB of the device (default: all of it).") var sizeMib: UInt64?
    @Flag(help: "Stamp written sectors with their LBA and check every stamped sector read back.") var verify = false
    @Flag(name: .customLong("prealloc-ram"), help: "Allocate every page of guest RAM up front (QEMU's prealloc=on; hugepage setups are like this).")
    var preallocRAM = false
    @Option(help: "Label for the JSON line.") var label: String = "vdev-bench"

    func run() throws {
        let mode: BenchQueue.Mode
        let sequential: Bool
        switch rw {
        case "randread": (mode, sequential) = (.read, false)
        case "randwrite": (mode, sequential) = (.write, false)
        case "read": (mode, sequential) = (.read, true)
        case "write": (mode, sequential) = (.write, true)
        case "randrw": (mode, sequential) = (.mixed, false)
        default: throw ValidationError("--rw: unknown pattern '\(rw)'")
        }
        guard let blockSize = parseSize(bs), blockSize >= 512, blockSize % 512 == 0, blockSize <= 1 << 20 else {
            throw ValidationError("--bs: expected a multiple of 512 up to 1m, got '\(bs)'")
        }
        guard (1...1024).contains(iodepth), (1...64).contains(queues), seconds > 0 else {
            throw ValidationError("--iodepth 1-1024, --queues 1-64, --seconds > 0")
        }
        var qsize: UInt16 = 128
        while Int(qsize) < 3 * iodepth { qsize *= 2 }
        let perQueue = UInt64(iodepth) * (UInt64(blockSize) + 8192) + 64 * UInt64(qsize) + (1 << 20)
        var clients: [BlkTestClient] = []
        var workers: [BenchQueue] = []
        for (n, path) in socket.enumerated() {
            let client = try BlkTestClient(socket: path, queueCount: queues, queueSize: qsize,
                                           ramSize: perQueue * UInt64(queues) + (4 << 20), features: nil,
                                           preallocateRAM: preallocRAM)
            clients.append(client)
            let cfg = try client.frontend.getConfig(offset: 0, size: 8)
            var sectors = cfg.u64(0)
            if let sizeMib { sectors = min(sectors, sizeMib * 2048) }
            guard sectors >= UInt64(blockSize / 512) else { throw ValidationError("\(path): device smaller than one block") }
            for i in 0..<queues {
                workers.append(BenchQueue(q: client.queues[i], kick: client.kicks[i], ram: client.ram, iodepth: iodepth,
                                          blockSize: UInt32(blockSize), sectors: sectors, mode: mode,
                                          sequential: sequential, verify: verify,
                                          seed: 0x9e37_79b9 &* UInt64(n * queues + i + 1)))
            }
        }
        if let idle {
            print("\(label): \(workers.count) queues on \(socket.count) sockets set up; idle for \(fmt(idle, 1))s")
            usleep(UInt32(idle * 1e6))
            for c in clients { c.frontend.disconnect() }
            return
        }
        let nthreads = max(1, min(threads ?? workers.count, workers.count))
        let t0 = nowNanos()
        let deadline = t0 + UInt64(seconds * 1e9)
        let groups = (0..<nthreads).map { t in stride(from: t, to: workers.count, by: nthreads).map { workers[$0] } }
        let pthreads = groups.map { group in
            spawnThread {
                for w in group { w.start() }
                // Unretained references: the loop below must not pay for reference counting per poll.
                let refs = group.map { Unmanaged.passUnretained($0) }
                var live = group.count
                var done = [Bool](repeating: false, count: group.count)
                withExtendedLifetime(group) {
                    while live > 0 {
                        for k in 0..<refs.count where !done[k] {
                            if !refs[k]._withUnsafeGuaranteedRef({ $0.step(deadline: deadline) }) { done[k] = true; live -= 1 }
                        }
                    }
                }
            }
        }
        for t in pthreads { pthread_join(t, nil) }
        let elapsed = Double(nowNanos() - t0) / 1e9

        var hist = Histogram()
        var ios: UInt64 = 0, bytes: UInt64 = 0, errors: UInt64 = 0, verifyErrors: UInt64 = 0
        for w in workers {
            hist.merge(w.hist)
            ios += w.completed
            bytes += w.bytes
            errors += w.errors
            verifyErrors += w.verifyErrors
        }
        let iops = Double(ios) / elapsed
        let mibps = Double(bytes) / elapsed / 1048576
        let mean = hist.mean / 1000, p50 = Double(hist.percentile(50)) / 1000, p99 = Double(hist.percentile(99)) / 1000
        print("\(label): \(rw) bs=\(blockSize) iodepth=\(iodepth) sockets=\(socket.count) queues=\(queues) threads=\(nthreads) \(fmt(elapsed, 1))s")
        print("  IOPS \(Int(iops))  \(fmt(mibps, 1)) MiB/s  latency mean \(fmt(mean, 1))us p50 \(fmt(p50, 1))us p99 \(fmt(p99, 1))us  errors \(errors)\(verify ? " verify_errors \(verifyErrors)" : "")")
        print("{\"label\":\"\(label)\",\"rw\":\"\(rw)\",\"bs\":\(blockSize),\"iodepth\":\(iodepth),\"sockets\":\(socket.count),\"queues\":\(queues),\"threads\":\(nthreads),\"seconds\":\(fmt(elapsed, 3)),\"ios\":\(ios),\"iops\":\(fmt(iops, 0)),\"mibps\":\(fmt(mibps, 2)),\"lat_mean_us\":\(fmt(mean, 2)),\"lat_p50_us\":\(fmt(p50, 2)),\"lat_p99_us\":\(fmt(p99, 2)),\"errors\":\(errors),\"verify_errors\":\(verifyErrors)}")
        for c in clients { c.frontend.disconnect() }
        if errors > 0 || verifyErrors > 0 { throw ExitCode(1) }
    }
}

/// Fixed-point formatting without Foundation.
func fmt(_ v: Double, _ digits: Int) -> String {
    guard v.isFinite else { return "0" }
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let r = (v * scale).rounded()
    let whole = Int64(r / scale)
    guard digits > 0 else { return "\(whole)" }
    var frac = String(Int64(abs(r) .truncatingRemainder(dividingBy: scale)))
    while frac.count < digits { frac = "0" + frac }
    return (r < 0 && whole == 0 ? "-" : "") + "\(whole).\(frac)"
}

func parseSize(_ s: String) -> Int? {
    let l = s.lowercased()
    if l.hasSuffix("k") { return Int(l.dropLast()).map { $0 * 1024 } }
    if l.hasSuffix("m") { return Int(l.dropLast()).map { $0 * 1048576 } }
    return Int(l)
}

VdevBench.main()
