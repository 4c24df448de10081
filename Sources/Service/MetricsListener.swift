#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Exports
import Logging
import Virtio

/// The optional HTTP listener for Prometheus: `GET /metrics` answers the text exposition format, anything
/// else 404. Minimal HTTP/1.0-style: one request a connection, then close. Clients are served one at a time
/// with a 5 s limit on the request head, so a silent client delays the next scrape by at most that.
public final class MetricsListener {
    public let address: MetricsAddress
    private let listener: ListeningSocket
    private let stopEvent: EventFD
    private var thread: pthread_t?
    private let render: () -> String
    let logger: Logger

    public init(address: MetricsAddress, render: @escaping () -> String, logger: Logger) throws {
        self.address = address
        self.render = render
        self.logger = logger
        stopEvent = try EventFD()
        switch address {
        case .tcp(let host, let port): listener = try ListeningSocket(tcpHost: host, port: port, backlog: 16)
        case .unix(let path): listener = try ListeningSocket(unixPath: path, access: SocketAccess(), backlog: 16)
        }
    }

    /// The bound TCP port (when the address asked for port 0).
    public var port: UInt16 { listener.tcpPort }

    public func start() {
        thread = spawnThread { [self] in acceptLoop() }
        switch address {
        case .tcp(let host, _):
            logger.info("metrics on http://\(MetricsAddress.tcp(host: host, port: port))/metrics")
        case .unix(let path):
            logger.info("metrics on unix:\(path) (HTTP, GET /metrics)")
        }
    }

    public func stop() {
        stopEvent.signal()
        if let t = thread { pthread_join(t, nil) }
        thread = nil
        listener.removeFile()
    }

    private func acceptLoop() {
        vdv_set_thread_name("vdevd-metrics")
        acceptUntilStopped(listenFD: listener.fd, stopFD: stopEvent.fd, log: { [logger] in logger.error("metrics: \($0)") }) { c in answer(ClientConnection(fd: c, stopFD: stopEvent.fd)) }
    }

    private func answer(_ conn: ClientConnection) {
        guard let head = conn.readUntil(Array("\r\n\r\n".utf8), max: 8192, timeoutMs: 5000)
                ?? conn.readUntil(Array("\n\n".utf8), max: 8192, timeoutMs: 0) else { return }
        let requestLine = String(decoding: head.prefix { $0 != 13 && $0 != 10 }, as: UTF8.self)
        let parts = requestLine.split(separator: " ")
        let status: String, body: String, type: String
        if parts.count >= 2, parts[0] == "GET" || parts[0] == "HEAD", parts[1] == "/metrics" || parts[1].hasPrefix("/metrics?") {
            status = "200 OK"
            body = parts[0] == "HEAD" ? "" : render()
            type = "text/plain; version=0.0.4; charset=utf-8"
        } else {
            status = "404 Not Found"
            body = "vdevd serves metrics at /metrics\n"
            type = "text/plain; charset=utf-8"
        }
        let response = "HTTP/1.1 \(status)\r\nContent-Type: \(type)\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body
        conn.write(Array(response.utf8))
    }
}
