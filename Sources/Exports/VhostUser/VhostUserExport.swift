#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Logging
import Virtio

/// A device served on a vhost-user socket: one listening Unix socket, one frontend at a time, served on the
/// export's own control thread (so a frontend that stalls mid-message stalls only its own export).
public final class VhostUserExport: Export {
    public let id: String
    public let socketPath: String
    public let device: VirtioDevice
    public let queueStats: [QueueStats]
    let pollers: PollerGroup
    let preferredPoller: Int?
    public internal(set) var logger: Logger
    private var listener: ListeningSocket?
    private let stopEvent: EventFD
    private var thread: pthread_t?
    private let stateLock = Lock()
    private var connected = false
    private var connectionsServed = 0
    private var queuePollers: [Int?]
    /// Guest memory mapped for this export's frontends (the cap is max-guest-memory).
    public let memoryBudget = GuestMemoryBudget()
    /// How long a new frontend has to start its handshake (SET_OWNER or SET_FEATURES) before it is closed: one
    /// frontend is served at a time, and a silent one would hold the export forever (issue 14, finding 6).
    public static var handshakeTimeoutMillis = 10_000
    /// Run at stop, after the socket is removed (e.g. a vsock export's host socket).
    public var onStop: [() -> Void] = []

    public init(id: String, device: VirtioDevice, socketPath: String, access: SocketAccess, pollers: PollerGroup,
                preferredPoller: Int?, logger: Logger) throws {
        self.id = id
        self.device = device
        self.socketPath = socketPath
        self.pollers = pollers
        self.preferredPoller = preferredPoller
        var l = logger
        l[metadataKey: "export"] = "\(id)"
        self.logger = l
        queueStats = (0..<device.maxQueues).map { _ in QueueStats() }
        queuePollers = Array(repeating: nil, count: device.maxQueues)
        stopEvent = try EventFD()
        listener = try ListeningSocket(unixPath: socketPath, access: access, backlog: 4)
    }

    public func start() {
        thread = spawnThread { [self] in acceptLoop() }
        logger.info("listening on \(socketPath) (\(device.deviceID), \(device.maxQueues) queues)")
    }

    /// Stops accepting, lets in-flight requests complete (queues drain on their pollers), removes the socket.
    public func stop() {
        stopEvent.signal()
        if let t = thread { pthread_join(t, nil) }
        thread = nil
        listener?.removeFile()
        listener = nil
        for f in onStop { f() }
        queueStats.logTotals(logger)
    }

    public var stats: [String: Any] {
        stateLock.withLock {
            ["id": id, "socket": socketPath, "connected": connected, "connections": connectionsServed,
             "queues": queueStats.map { $0.snapshot }]
        }
    }

    /// What the export is doing now: for the management socket and metrics (counters read, never locked).
    public var snapshot: ExportSnapshot {
        let (isConnected, served, placement) = stateLock.withLock { (connected, connectionsServed, queuePollers) }
        return ExportSnapshot(id: id, socket: socketPath, connected: isConnected, connections: served,
                              queues: queueStats.enumerated().map { i, s in
                                  ExportSnapshot.Queue(index: i, poller: placement[i], counters: s.snapshot)
                              })
    }

    private func acceptLoop() {
        vdv_set_thread_name("vdevd-\(id)")
        guard let listenFD = listener?.fd else { return }
        var throttle = AcceptThrottle()
        while true {
            var fds = [pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: stopEvent.fd, events: Int16(POLLIN), revents: 0)]
            let n = poll(&fds, 2, -1)
            if n < 0 { if errno == EINTR { continue }; logger.error("poll: \(errno)"); return }
            if fds[1].revents != 0 { return }
            let c = vdv_accept(listenFD)
            if throttle.pauseIfExhausted(c, stopFD: stopEvent.fd, log: { logger.error("\($0)") }) { continue }
            if c < 0 { continue }
            stateLock.withLock {
                connected = true
                connectionsServed += 1
            }
            logger.info("frontend connected")
            let session = VhostUserSession(device: device, pollers: pollers, preferredPoller: preferredPoller,
                                           queueStats: queueStats,
                                           connection: VhostUserConnection(fd: c, stopFD: stopEvent.fd,
                                                                               handshakeMillis: Self.handshakeTimeoutMillis),
                                           logger: logger)
            session.memoryBudget = memoryBudget
            session.onPlacement = { [self] q, p in stateLock.withLock { queuePollers[q] = p } }
            session.serve()
            stateLock.withLock { connected = false }
        }
    }
}
