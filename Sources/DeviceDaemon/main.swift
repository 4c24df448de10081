#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import CVdevd
import Exports
import Logging
import Net
import Service
import Virtio

/// `vdevd`: serves virtio devices to VMs over vhost-user sockets.
struct VdevdCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vdevd",
        abstract: "Serve virtio devices (blk, vsock) to virtual machines over vhost-user sockets.",
        discussion: """
        Each --export is TYPE,key=value,... (a comma inside a value is written ,,). Export types and keys:

        \(ExportSpec.helpText)
        A config file (--config FILE, TOML) holds the same: a [daemon] table with the flags below under the
        same names (plus management-socket and metrics), and one [[export]] table per export with type = "..."
        and the keys above. Command-line exports and flags add to (and flags override) the file's.

        Example:
          vdevd --export vhost-user-blk,id=disk0,path=disk.img,socket=/tmp/disk0.sock
          qemu-system-x86_64 ... -object memory-backend-memfd,id=mem,size=1G,share=on \\
            -machine q35,memory-backend=mem \\
            -chardev socket,id=c0,path=/tmp/disk0.sock -device vhost-user-blk-pci,chardev=c0

        With a config file (or --management-socket) vdevd listens on a management socket (default
        \(DaemonSettings.defaultManagementSocket)) that vdevctl drives: list, add, remove, stats, metrics.
        SIGTERM or SIGINT stops vdevd cleanly: in-flight requests complete, sockets are removed, exit status 0.
        SIGHUP reads the config file again: exports added to it are added, exports dropped from it removed.
        Bad usage exits with status 2 before anything is created.
        """
    )

    @Option(name: .customLong("config"), help: ArgumentHelp("A TOML config file ([daemon], [[export]]).", valueName: "file"))
    var config: String?

    @Option(name: .customLong("check-config"), help: ArgumentHelp("Validate a config file (and any --export) and exit.", valueName: "file"))
    var checkConfig: String?

    @Option(name: .customLong("export"), help: ArgumentHelp("An export: TYPE,key=value,... (repeatable).", valueName: "spec"))
    var exports: [String] = []

    @Option(name: .customLong("switch"), help: ArgumentHelp("A switch for net exports: id=NAME[,uplink=tap:IFNAME] (repeatable).", valueName: "spec"))
    var switches: [String] = []

    @Option(help: ArgumentHelp("Number of poller threads serving all queues (default 1).", valueName: "n"))
    var pollers: String?

    @Option(help: ArgumentHelp("CPUs to pin pollers to, in order (e.g. 2,3).", valueName: "list"))
    var cpus: String?

    @Option(name: .customLong("io-workers"), help: ArgumentHelp("Most io_uring worker threads per poller, for I/O the kernel cannot start without blocking; they run on the CPUs no poller is pinned to (default \(IOWorkers.defaultMaxBounded)).", valueName: "n"))
    var ioWorkers: String?

    @Option(name: .customLong("stop-timeout-ms"), help: ArgumentHelp("How long stopping a queue (GET_VRING_BASE, a disconnect, SIGTERM) waits for requests at the device before cancelling them; a quarter of it later, what is left fails with IOERR (default \(Poller.defaultStopTimeoutMicros / 1000)).", valueName: "ms"))
    var stopTimeoutMs: String?

    @Option(name: .customLong("poll-us"), help: ArgumentHelp("Microseconds a poller keeps spinning after its last work before it sleeps (0 = sleep at once; default 50).", valueName: "us"))
    var pollUs: String?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical (default info).")
    var logLevel: String?

    @Option(name: .customLong("log-format"), help: "text or json: one JSON object a line, for log shippers (default text).")
    var logFormat: String?

    @Option(name: .customLong("management-socket"), help: ArgumentHelp("Management socket path, or none (default \(DaemonSettings.defaultManagementSocket) with --config, none without).", valueName: "path"))
    var managementSocket: String?

    @Option(help: ArgumentHelp("Serve Prometheus metrics over HTTP: HOST:PORT (e.g. 127.0.0.1:9464) or a Unix socket path.", valueName: "address"))
    var metrics: String?

    /// The flags as daemon settings, through the same parser as the file's [daemon] table.
    func flagSettings() -> DaemonSettings {
        var s = DaemonSettings()
        let flags: [(String, String?)] = [("pollers", pollers), ("cpus", cpus), ("io-workers", ioWorkers),
                                          ("stop-timeout-ms", stopTimeoutMs), ("poll-us", pollUs), ("log-level", logLevel),
                                          ("log-format", logFormat), ("management-socket", managementSocket),
                                          ("metrics", metrics)]
        for (key, value) in flags {
            guard let value else { continue }
            do { try s.set(key, value) } catch let e as DaemonSettings.ValueError {
                usageError("--\(key): \(e.message)")
            } catch { usageError("--\(key): \(error)") }
        }
        return s
    }

    func run() throws {
        if let checkConfig, config != nil, config != checkConfig { usageError("--check-config and --config name different files") }
        let file = checkConfig ?? config
        var fileConfig = ConfigFile()
        if let file {
            do { fileConfig = try ConfigFile.load(path: file) } catch { usageError("\(error)") }
        }
        let settings = fileConfig.daemon.overridden(by: flagSettings())
        var entries: [ExportEntry] = []
        var switchSpecs: [SwitchSpec] = []
        do {
            for (i, e) in exports.enumerated() {
                do { entries.append(ExportEntry(spec: try ExportSpec.parse(e), origin: .commandLine(i + 1))) } catch let err as ExportSpecError {
                    throw UsageMessage("--export #\(i + 1): \(err)")
                }
            }
            entries += fileConfig.exports
            try ExportEntry.validate(entries)
            for s in switches { switchSpecs.append(try SwitchSpec.parse(s)) }
            switchSpecs += fileConfig.switches
            try SwitchSpec.validate(switchSpecs, exports: entries.map(\.spec))
            let pollerCount = settings.pollers ?? 1
            for e in entries where e.spec.poller != nil && e.spec.poller! >= pollerCount {
                throw EntryError(entry: e, key: "poller", message: "no poller \(e.spec.poller!) (there are \(pollerCount))")
            }
        } catch {
            usageError("\(error)")
        }
        let managementPath = settings.managementSocketPath(byDefault: file != nil)
        if let checkConfig {
            let ids = entries.map(\.spec.id).joined(separator: ", ")
            print("\(checkConfig): OK: \(entries.count) export(s)\(ids.isEmpty ? "" : " (\(ids))"), \(settings.pollers ?? 1) poller(s)"
                  + (managementPath.map { ", management socket \($0)" } ?? "") + (settings.metrics.map { ", metrics on \($0)" } ?? ""))
            return
        }
        guard !entries.isEmpty || managementPath != nil else {
            usageError("nothing to serve: give at least one --export, a --config with [[export]] tables, or a --management-socket (see --help)")
        }

        let level = settings.logLevel ?? .info
        let json = settings.logFormat == DaemonSettings.LogFormat.json
        LoggingSystem.bootstrap { label in
            if json {
                var h = JSONLogHandler(label: label)
                h.logLevel = level
                return h
            }
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let logger = Logger(label: "vdevd")
        // Signals are taken synchronously by the main thread; every other thread inherits the mask.
        vdv_block_term_signals()
        // Guests open connections (vsock) and frontends pass fds: systemd's default soft limit of 1024 is soon
        // spent. The hard limit is what the operator allows.
        var fdsBefore: UInt64 = 0, fdsAfter: UInt64 = 0
        let raised = vdv_raise_nofile_limit(&fdsBefore, &fdsAfter)
        if raised < 0 {
            logger.warning("cannot raise the open-file limit from \(fdsBefore): \(SystemError.describe(-raised))")
        } else if fdsAfter != fdsBefore {
            logger.info("open-file limit raised from \(fdsBefore) to \(fdsAfter) (the hard limit)")
        }

        let group: PollerGroup
        do {
            group = try PollerGroup(count: settings.pollers ?? 1, cpus: settings.cpus ?? [], pollMicroseconds: settings.pollUs ?? 50,
                                    maxWorkers: settings.ioWorkers ?? IOWorkers.defaultMaxBounded,
                                    stopTimeoutMicros: (settings.stopTimeoutMs ?? Poller.defaultStopTimeoutMicros / 1000) * 1000)
        } catch {
            logger.critical("cannot start pollers: \(error)")
            throw ExitCode(1)
        }
        if !group.workers.cpus.isEmpty {
            logger.info("io_uring workers run on CPUs \(group.workers.cpus.map(String.init).joined(separator: ",")), at most \(settings.ioWorkers ?? IOWorkers.defaultMaxBounded) per poller")
        }
        var uplinks: [TapUplink] = []
        for s in switchSpecs {
            do {
                if let u = try SwitchFactory.make(s).1 {
                    uplinks.append(u)
                    logger.info("switch \(s.id): uplink tap \(u.tap.name)")
                }
            } catch {
                logger.critical("\(error)")
                for u in uplinks { u.stop() }
                group.stopAll()
                throw ExitCode(1)
            }
        }
        let daemon = Daemon(pollers: group, logger: logger)
        var management: ManagementServer?
        var metricsListener: MetricsListener?
        func shutdown() {
            management?.stop()
            metricsListener?.stop()
            // Uplinks first, while the pollers still run: a frame an uplink handed to a port is released there.
            for u in uplinks {
                u.stop()
                let c = u.port.counters
                logger.info("uplink \(u.tap.name) totals: \(PortCounters.Counter.allCases.filter { c.get($0) != 0 }.map { "\($0)=\(c.get($0))" }.joined(separator: " "))")
            }
            daemon.stopAll()
        }
        do {
            for e in entries { try daemon.add(e) }
            if let managementPath {
                if managementPath == DaemonSettings.defaultManagementSocket { mkdir("/run/vdevd", 0o755) }
                management = try ManagementServer(path: managementPath, daemon: daemon, logger: logger)
                management?.start()
            }
            if let address = settings.metrics {
                metricsListener = try MetricsListener(address: address, render: { MetricsRenderer.render((try? daemon.stats()) ?? StatsReport.empty) },
                                                      logger: logger)
                metricsListener?.start()
            }
        } catch {
            logger.critical("\(error)")
            shutdown()
            throw ExitCode(1)
        }
        logger.info("vdevd ready: \(entries.count) export(s), \(group.pollers.count) poller(s)")
        SystemdNotify.send("READY=1\nSTATUS=serving \(entries.count) export(s)\nMAINPID=\(getpid())")
        while true {
            let sig = vdv_wait_term_signal()
            if sig == SIGHUP {
                guard let config else {
                    logger.notice("SIGHUP: no config file to read again")
                    continue
                }
                SystemdNotify.send("RELOADING=1\nMONOTONIC_USEC=\(monotonicMicros())")
                do {
                    let newConfig = try ConfigFile.load(path: config)
                    var all = newConfig.exports
                    all += daemon.entries.filter { if case .file = $0.origin { return false }; return true }
                    try ExportEntry.validate(all)
                    let o = ConfigReload.apply(newConfig, running: fileConfig.daemon, to: daemon, logger: logger)
                    logger.info("SIGHUP: config read again: \(o.added.count) added, \(o.removed.count) removed, \(o.refused.count) left as they were, \(o.failed.count) failed")
                } catch {
                    logger.error("SIGHUP: config not applied: \(error)")
                }
                SystemdNotify.send("READY=1")
                continue
            }
            logger.info("signal \(sig): stopping")
            SystemdNotify.send("STOPPING=1")
            break
        }
        shutdown()
        logger.info("vdevd stopped")
    }

    func usageError(_ message: String) -> Never {
        FileHandleStderr.write("vdevd: \(message)\n")
        Glibc.exit(2)
    }
}

struct UsageMessage: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

enum FileHandleStderr {
    static func write(_ s: String) {
        var bytes = Array(s.utf8)
        _ = Glibc.write(2, &bytes, bytes.count)
    }
}

// Argument errors exit with status 2 (not ArgumentParser's 64), like every other usage error here.
do {
    var command = try VdevdCommand.parseAsRoot()
    try command.run()
} catch {
    let code = VdevdCommand.exitCode(for: error)
    if code == .success || error is ExitCode { VdevdCommand.exit(withError: error) }
    FileHandleStderr.write(VdevdCommand.fullMessage(for: error) + "\n")
    Glibc.exit(2)
}
