import Exports
import Logging

/// SIGHUP: the config file read again and the difference applied to the exports it defines. New exports
/// are added, dropped ones removed, and a live export whose keys changed is left as it is (its identity is
/// what a VM is connected to: remove it from the file, reload, and add it back). Exports from the command
/// line or the management socket are not the file's and are never touched. Daemon settings need a restart.
public enum ConfigReload {
    public struct Outcome: Equatable {
        public var added: [String] = []
        public var removed: [String] = []
        public var refused: [String] = []
        public var failed: [String] = []
    }

    @discardableResult
    public static func apply(_ config: ConfigFile, running daemonSettings: DaemonSettings, to daemon: Daemon,
                             logger: Logger) -> Outcome {
        var out = Outcome()
        if config.daemon != daemonSettings {
            logger.warning("reload: [daemon] settings changed; they take effect at the next start")
        }
        let current = daemon.entries
        let fromFile = current.filter { if case .file = $0.origin { return true }; return false }
        let wanted = Dictionary(config.exports.map { ($0.spec.id, $0) }, uniquingKeysWith: { a, _ in a })
        for e in fromFile where wanted[e.spec.id] == nil {
            do {
                try daemon.remove(id: e.spec.id)
                out.removed.append(e.spec.id)
                logger.info("reload: removed export (no longer in the config file)", metadata: ["export": "\(e.spec.id)"])
            } catch {
                out.failed.append(e.spec.id)
                logger.error("reload: cannot remove: \(error)", metadata: ["export": "\(e.spec.id)"])
            }
        }
        for w in config.exports {
            if let live = current.first(where: { $0.spec.id == w.spec.id }) {
                if case .file = live.origin, live.spec != w.spec {
                    out.refused.append(w.spec.id)
                    logger.warning("reload: export changed in the config file; a live export keeps its keys (remove it, reload, add it back)",
                                   metadata: ["export": "\(w.spec.id)"])
                } else if case .file = live.origin {
                    // Unchanged.
                } else {
                    out.refused.append(w.spec.id)
                    logger.warning("reload: id is used by an export from \(live.origin); not added", metadata: ["export": "\(w.spec.id)"])
                }
                continue
            }
            do {
                try daemon.add(w)
                out.added.append(w.spec.id)
                logger.info("reload: added export", metadata: ["export": "\(w.spec.id)"])
            } catch {
                out.failed.append(w.spec.id)
                logger.error("reload: cannot add: \(error)", metadata: ["export": "\(w.spec.id)"])
            }
        }
        return out
    }
}
