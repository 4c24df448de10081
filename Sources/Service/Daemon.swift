import Exports
import Logging
import Virtio

/// The running service: its pollers and the exports it serves, which the command line, the config file, the
/// management socket and SIGHUP add to and remove from. Changes are serialized by one control-path lock;
/// no export's data path ever takes it.
public final class Daemon {
    public let pollers: PollerGroup
    public let logger: Logger
    private let lock = Lock()
    private struct Running {
        let entry: ExportEntry
        let export: Export
    }
    private var running: [Running] = []

    public init(pollers: PollerGroup, logger: Logger) {
        self.pollers = pollers
        self.logger = logger
    }

    public var entries: [ExportEntry] { lock.withLock { running.map(\.entry) } }

    /// Creates the export and starts listening; refused (nothing created) if its id or socket is taken.
    public func add(_ entry: ExportEntry) throws {
        try lock.withLock {
            try ExportEntry.validate(running.map(\.entry) + [entry])
            if let p = entry.spec.poller, p >= pollers.pollers.count {
                throw EntryError(entry: entry, key: "poller", message: "no poller \(p) (there are \(pollers.pollers.count))")
            }
            let e = try ExportFactory.make(entry.spec, pollers: pollers, logger: logger)
            e.start()
            running.append(Running(entry: entry, export: e))
        }
    }

    /// Stops the export: it accepts nothing more, its frontend is disconnected after in-flight requests
    /// complete, and its socket is removed. Other exports are not touched.
    public func remove(id: String) throws {
        let r: Running = try lock.withLock {
            guard let i = running.firstIndex(where: { $0.entry.spec.id == id }) else {
                throw DaemonError.noSuchExport(id)
            }
            return running.remove(at: i)
        }
        r.export.stop()
        logger.info("export removed", metadata: ["export": "\(id)"])
    }

    /// Stops every export (SIGTERM), then the pollers.
    public func stopAll() {
        let all = lock.withLock { () -> [Running] in
            defer { running.removeAll() }
            return running
        }
        for r in all { r.export.stop() }
        pollers.stopAll()
    }

    /// Counters of every export (or one) and every poller. Reads the per-queue counters the pollers keep.
    public func stats(id: String? = nil) throws -> StatsReport {
        let all = lock.withLock { running }
        if let id, !all.contains(where: { $0.entry.spec.id == id }) { throw DaemonError.noSuchExport(id) }
        var exports: [StatsReport.Export] = []
        var served: [Int: Set<String>] = [:]
        for r in all {
            let s = r.export.snapshot
            for q in s.queues { if let p = q.poller { served[p, default: []].insert(s.id) } }
            if id == nil || id == s.id {
                exports.append(StatsReport.Export(id: s.id, type: r.entry.spec.kind.rawValue, socket: s.socket,
                                                  connected: s.connected, connections: s.connections, queues: s.queues))
            }
        }
        let ps = pollers.pollers.map { p in
            StatsReport.Poller(id: p.id, cpu: p.cpu, busyMicros: p.stats.busyMicros, idleMicros: p.stats.idleMicros,
                               queues: p.queueCount, exports: served[p.id].map { $0.sorted() } ?? [])
        }
        return StatsReport(exports: exports, pollers: ps)
    }
}

public enum DaemonError: Error, CustomStringConvertible, Equatable {
    case noSuchExport(String)

    public var description: String {
        switch self {
        case .noSuchExport(let id): return "no export '\(id)'"
        }
    }
}
