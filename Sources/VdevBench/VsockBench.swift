#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import CVdevd
import VhostUserTestSupport
import Virtio

/// vsock stream throughput through a vhost-user-vsock export: this process plays the guest (driver) and the
/// host program, and measures a plain Unix-socket-to-Unix-socket copy the same way as the ceiling.
struct VsockBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vsock",
        abstract: "Stream throughput guest->host and host->guest through a vhost-user-vsock export.")

    @Option(help: "The export's vhost-user socket.") var socket: String
    @Option(help: "The export's uds-path.") var udsPath: String
    @Option(help: "Bytes per write (guest packets and host writes).") var bs: Int = 65536
    @Option(help: "Seconds per direction.") var seconds: Double = 3
    @Option(help: "Guest port used.") var port: UInt32 = 5201
    @Option(help: "Label for the JSON lines.") var label: String = "vsock"

    func run() throws {
        let driver = try VsockTestDriver(socket: socket)
        let g2h = try guestToHost(driver)
        let h2g = try hostToGuest(driver)
        let ceiling = unixCeiling()
        for (name, v) in [("guest_to_host", g2h), ("host_to_guest", h2g), ("unix_to_unix", ceiling)] {
            print("\(label) \(name): \(fmt(v, 1)) MiB/s (\(fmt(v / ceiling * 100, 1))% of the Unix-socket ceiling)")
        }
        print("{\"label\":\"\(label)\",\"bs\":\(bs),\"g2h_mibps\":\(fmt(g2h, 1)),\"h2g_mibps\":\(fmt(h2g, 1)),\"unix_mibps\":\(fmt(ceiling, 1)),\"g2h_ratio\":\(fmt(g2h / ceiling, 3)),\"h2g_ratio\":\(fmt(h2g / ceiling, 3))}")
        driver.frontend.disconnect()
    }

    /// The guest connects to host port P (bridged to <uds-path>_<P>) and writes as fast as credit allows.
    func guestToHost(_ d: VsockTestDriver) throws -> Double {
        let path = "\(udsPath)_\(port)"
        unlink(path)
        let lfd = vdv_unix_listen(path, 0o600, 1)
        guard lfd >= 0 else { throw ValidationError("listen \(path): \(-lfd)") }
        defer { close(lfd); unlink(path) }
        let counter = ByteCounter()
        let reader = spawnThread {
            let c = vdv_accept(lfd)
            guard c >= 0 else { return }
            counter.readAll(c)
            close(c)
        }
        guard let conn = try d.connect(port: port, localPort: 40000) else { throw ValidationError("guest connect refused") }
        let t0 = monotonic()
        _ = try d.sendBulk(conn, size: bs, until: t0 + seconds)
        try d.shutdown(conn, flags: 3)
        pthread_join(reader, nil)
        let t1 = counter.lastByteAt
        return Double(counter.bytes) / 1048576 / max(t1 - t0, 1e-6)
    }

    /// A host program connects through uds-path (CONNECT <port>) and writes; the guest reads and returns credit.
    func hostToGuest(_ d: VsockTestDriver) throws -> Double {
        let gport = port + 1
        let stop = seconds
        let writer = spawnThread {
            let fd = vdv_unix_connect(udsPath, Int32(SOCK_STREAM.rawValue))
            guard fd >= 0 else { return }
            let line = Array("CONNECT \(gport)\n".utf8)
            _ = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            var b: UInt8 = 0
            while read(fd, &b, 1) == 1 && b != UInt8(ascii: "\n") {}
            let buf = UnsafeMutableRawPointer.allocate(byteCount: bs, alignment: 4096)
            memset(buf, 0x5a, bs)
            let end = monotonic() + stop
            while monotonic() < end { if write(fd, buf, bs) <= 0 { break } }
            buf.deallocate()
            close(fd)
        }
        let conn = try d.accept(port: gport)
        conn.keepData = false
        let t0 = monotonic()
        var last = t0
        var seen = 0
        while conn.peerShutdown == 0 && !conn.reset && monotonic() < t0 + seconds + 10 {
            d.poll()
            if conn.totalReceived != seen { seen = conn.totalReceived; last = monotonic() }
        }
        pthread_join(writer, nil)
        try? d.reset(conn)
        return Double(conn.totalReceived) / 1048576 / max(last - t0, 1e-6)
    }

    /// The ceiling: the same writes from one Unix socket to another on this machine.
    func unixCeiling() -> Double {
        var sv: [Int32] = [0, 0]
        socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &sv)
        let counter = ByteCounter()
        let reader = spawnThread { counter.readAll(sv[1]) }
        let buf = UnsafeMutableRawPointer.allocate(byteCount: bs, alignment: 4096)
        memset(buf, 0x5a, bs)
        let t0 = monotonic()
        while monotonic() < t0 + seconds { if write(sv[0], buf, bs) <= 0 { break } }
        close(sv[0])
        pthread_join(reader, nil)
        close(sv[1])
        buf.deallocate()
        return Double(counter.bytes) / 1048576 / max(counter.lastByteAt - t0, 1e-6)
    }
}

final class ByteCounter {
    var bytes = 0
    var lastByteAt = 0.0
    func readAll(_ fd: Int32) {
        let buf = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buf.deallocate() }
        while true {
            let n = read(fd, buf, 1 << 20)
            if n <= 0 { break }
            bytes += n
            lastByteAt = monotonic()
        }
    }
}

func monotonic() -> Double { Double(nowNanos()) / 1e9 }
