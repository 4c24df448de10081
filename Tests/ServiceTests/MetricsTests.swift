#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Foundation
import Service
import VhostUserTestSupport
import XCTest

/// Prometheus text parsed the way a scraper reads it: TYPE lines and samples, every other line refused.
struct Exposition {
    var types: [String: String] = [:]
    var samples: [String: Double] = [:]
    var junk: [String] = []

    init(_ text: String) {
        for line in text.split(separator: "\n").map(String.init) {
            if line.hasPrefix("# TYPE ") {
                let p = line.split(separator: " ")
                if p.count == 4 { types[String(p[2])] = String(p[3]) } else { junk.append(line) }
            } else if line.hasPrefix("# HELP ") {
                continue
            } else if let space = line.lastIndex(of: " "), let v = Double(line[line.index(after: space)...]) {
                let series = String(line[..<space])
                let name = String(series.prefix { $0 != "{" })
                if name.isEmpty || !name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" || $0 == ":" }) {
                    junk.append(line)
                } else {
                    samples[series] = v
                }
            } else {
                junk.append(line)
            }
        }
    }
}

final class MetricsTests: ServiceTestCase {
    /// One HTTP request on a connected socket; the whole response.
    func http(_ fd: Int32, _ target: String) -> String {
        defer { close(fd) }
        let req = Array("GET \(target) HTTP/1.1\r\nHost: vdevd\r\n\r\n".utf8)
        _ = req.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    func tcpConnect(port: UInt16) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = port.bigEndian
        a.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        XCTAssertEqual(rc, 0, "connect: errno \(errno)")
        return fd
    }

    func body(_ response: String) -> String {
        guard let r = response.range(of: "\r\n\r\n") else { return "" }
        return String(response[r.upperBound...])
    }

    func testHTTPScrapeCountsTheRequestsTheTestMade() throws {
        let img = try image(), sock = path("d.sock"), mgmt = path("m.sock")
        let d = try launch(["--pollers", "2", "--metrics", "127.0.0.1:0", "--management-socket", mgmt,
                            "--export", blk("d0", img, sock, "num-queues=2")])
        guard waitLog(d) else { return }
        // The log names the port the kernel gave.
        let line = try XCTUnwrap(d.err().split(separator: "\n").first { $0.contains("metrics on http://127.0.0.1:") })
        let port = try XCTUnwrap(UInt16(line.split(separator: ":").last!.prefix { $0.isNumber }))

        let c = try BlkTestClient(socket: sock, queueCount: 2)
        for i in 0..<7 { XCTAssertEqual(try c.write(sector: UInt64(i) * 8, data: payload(4096, seed: UInt8(i))), 0) }
        for i in 0..<3 { XCTAssertEqual(try c.read(sector: UInt64(i) * 8, count: 4096, queue: 1).1, payload(4096, seed: UInt8(i))) }
        XCTAssertEqual(try c.run(type: .flush, sector: 0).0, 0)

        let response = http(tcpConnect(port: port), "/metrics")
        XCTAssertTrue(response.hasPrefix("HTTP/1.1 200 OK\r\n"), response)
        XCTAssertTrue(response.contains("Content-Type: text/plain; version=0.0.4"), response)
        let m = Exposition(body(response))
        XCTAssertEqual(m.junk, [])
        XCTAssertEqual(m.types["vdevd_queue_requests_total"], "counter")
        XCTAssertEqual(m.types["vdevd_queue_written_bytes_total"], "counter")
        XCTAssertEqual(m.types["vdevd_poller_busy_seconds_total"], "counter")
        XCTAssertEqual(m.types["vdevd_export_connected"], "gauge")
        XCTAssertEqual(m.samples[#"vdevd_queue_requests_total{export="d0",queue="0"}"#], 8)
        XCTAssertEqual(m.samples[#"vdevd_queue_requests_total{export="d0",queue="1"}"#], 3)
        XCTAssertEqual(m.samples[#"vdevd_queue_written_bytes_total{export="d0",queue="0"}"#], 7 * 4096)
        XCTAssertEqual(m.samples[#"vdevd_queue_read_bytes_total{export="d0",queue="1"}"#], 3 * 4096)
        XCTAssertEqual(m.samples[#"vdevd_queue_flushes_total{export="d0",queue="0"}"#], 1)
        XCTAssertEqual(m.samples[#"vdevd_queue_errors_total{export="d0",queue="0"}"#], 0)
        XCTAssertEqual(m.samples[#"vdevd_export_connected{export="d0",type="vhost-user-blk"}"#], 1)
        XCTAssertEqual(m.samples["vdevd_exports"], 1)
        XCTAssertNotNil(m.samples[#"vdevd_poller_idle_seconds_total{poller="1"}"#])
        XCTAssertEqual(m.samples[#"vdevd_poller_queues{poller="0"}"#].map { $0 + m.samples[#"vdevd_poller_queues{poller="1"}"#]! }, 2)

        XCTAssertTrue(http(tcpConnect(port: port), "/").hasPrefix("HTTP/1.1 404 Not Found\r\n"))

        // vdevctl metrics: the same text from the management socket.
        let v = try run("vdevctl", ["metrics", "--socket", mgmt])
        XCTAssertEqual(v.status, 0, v.stderr)
        let m2 = Exposition(v.stdout)
        XCTAssertEqual(m2.junk, [])
        XCTAssertEqual(m2.samples[#"vdevd_queue_requests_total{export="d0",queue="0"}"#], 8)
        stop(d)
    }

    func testMetricsOnAUnixSocket() throws {
        let img = try image(), sock = path("d.sock"), msock = path("metrics.sock")
        let d = try launch(["--metrics", msock, "--export", blk("d0", img, sock)])
        guard waitLog(d) else { return }
        XCTAssertEqual(fileStat(msock).map { $0.st_mode & 0o777 }, 0o600)
        let c = try BlkTestClient(socket: sock)
        XCTAssertEqual(try c.write(sector: 0, data: payload(512, seed: 1)), 0)
        let fd = vdv_unix_connect(msock, Int32(SOCK_STREAM.rawValue))
        XCTAssertGreaterThanOrEqual(fd, 0)
        let m = Exposition(body(http(fd, "/metrics")))
        XCTAssertEqual(m.samples[#"vdevd_queue_written_bytes_total{export="d0",queue="0"}"#], 512)
        stop(d)
        XCTAssertNil(fileStat(msock))
    }
}
