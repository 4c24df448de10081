#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Exports
import Logging
import Virtio

/// The management socket: a Unix socket (mode 0600 unless asked otherwise) that answers one JSON request a
/// line (`ManagementRequest`). Each client is served on its own thread, so a slow client holds up nobody;
/// changes to the set of exports are serialized by the `Daemon`.
public final class ManagementServer {
    public let path: String
    let daemon: Daemon
    var logger: Logger
    private let listener: ListeningSocket
    private let stopEvent: EventFD
    private var thread: pthread_t?
    private let lock = Lock()
    private var clients = 0

    /// At most this many clients at once; more are answered with an error and closed.
    public static let maxClients = 16

    public init(path: String, access: SocketAccess = SocketAccess(), daemon: Daemon, logger: Logger) throws {
        self.path = path
        self.daemon = daemon
        self.logger = logger
        stopEvent = try EventFD()
        listener = try ListeningSocket(unixPath: path, access: access, backlog: 16)
    }

    public func start() {
        thread = spawnThread { [self] in acceptLoop() }
        logger.info("management socket on \(path)")
    }

    /// Stops accepting, ends every client's connection, removes the socket.
    public func stop() {
        stopEvent.signal()
        if let t = thread { pthread_join(t, nil) }
        thread = nil
        while lock.withLock({ clients }) > 0 { usleep(1000) }
        listener.removeFile()
    }

    private func acceptLoop() {
        vdv_set_thread_name("vdevd-mgmt")
        acceptUntilStopped(listenFD: listener.fd, stopFD: stopEvent.fd, log: { [logger] in logger.error("management socket: \($0)") }) { c in
            let admitted = lock.withLock { () -> Bool in
                guard clients < Self.maxClients else { return false }
                clients += 1
                return true
            }
            let conn = ClientConnection(fd: c, stopFD: stopEvent.fd)
            guard admitted else {
                conn.write(ManagementReply.failure("too many management clients (\(Self.maxClients))").encoded())
                return
            }
            // Detached: nobody joins a client's thread; `stop()` waits for the count instead.
            pthread_detach(spawnThread { [self] in
                serve(conn)
                lock.withLock { clients -= 1 }
            })
        }
    }

    private func serve(_ conn: ClientConnection) {
        while let line = conn.readLine(max: ManagementRequest.maxLine) {
            let reply: ManagementReply
            switch line {
            case .tooLong:
                conn.write(ManagementReply.failure("request longer than \(ManagementRequest.maxLine) bytes").encoded())
                return
            case .line(let bytes):
                if bytes.allSatisfy({ $0 == 32 || $0 == 9 || $0 == 13 }) { continue }
                reply = handle(bytes)
            }
            guard conn.write(reply.encoded()) else { return }
        }
    }

    func handle(_ bytes: [UInt8]) -> ManagementReply {
        let request: ManagementRequest
        do { request = try ManagementRequest.decode(bytes) } catch { return .failure("\(error)") }
        switch request {
        case .list:
            let stats = (try? daemon.stats()) ?? StatsReport.empty
            let listed = daemon.entries.map { e in
                ManagementReply.Listed(id: e.spec.id, type: e.spec.kind.rawValue, socket: e.spec.endpoint,
                                       connected: stats.exports.first(where: { $0.id == e.spec.id })?.connected ?? false,
                                       origin: "\(e.origin)")
            }
            return ManagementReply(ok: true, exports: listed)
        case .add(let spec):
            do {
                try daemon.add(ExportEntry(spec: spec, origin: .management))
                logger.info("export added through the management socket", metadata: ["export": "\(spec.id)"])
                return ManagementReply(ok: true)
            } catch {
                // The error can quote what the client sent: escaped for the log.
                logger.warning("add refused: \(logEscaped("\(error)", limit: 512))", metadata: ["export": "\(logEscaped(spec.id))"])
                return .failure("\(error)")
            }
        case .remove(let id):
            do {
                try daemon.remove(id: id)
                return ManagementReply(ok: true)
            } catch { return .failure("\(error)") }
        case .stats(let id):
            do { return ManagementReply(ok: true, stats: try daemon.stats(id: id)) } catch { return .failure("\(error)") }
        case .metrics:
            return ManagementReply(ok: true, metrics: MetricsRenderer.render((try? daemon.stats()) ?? StatsReport.empty))
        }
    }
}
