#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import CVdevd
import Exports
import Logging
import Net
import Virtio

/// `vdevd`: serves virtio devices to VMs over vhost-user sockets.
struct VdevdCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vdevd",
        abstract: "Serve virtio devices (blk) to virtual machines over vhost-user sockets.",
        discussion: """
        Each --export is TYPE,key=value,... (a comma inside a value is written ,,). Export types and keys:

        \(ExportSpec.helpText)
        Example:
          vdevd --export vhost-user-blk,id=disk0,path=disk.img,socket=/tmp/disk0.sock
          qemu-system-x86_64 ... -object memory-backend-memfd,id=mem,size=1G,share=on \\
            -machine q35,memory-backend=mem \\
            -chardev socket,id=c0,path=/tmp/disk0.sock -device vhost-user-blk-pci,chardev=c0

        SIGTERM or SIGINT stops vdevd cleanly: in-flight requests complete, sockets are removed, exit status 0.
        Bad usage exits with status 2 before anything is created.
        """
    )

    @Option(name: .customLong("export"), help: ArgumentHelp("An export: TYPE,key=value,... (repeatable).", valueName: "spec"))
    var exports: [String] = []

    @Option(name: .customLong("switch"), help: ArgumentHelp("A switch for net exports: id=NAME[,uplink=tap:IFNAME] (repeatable).", valueName: "spec"))
    var switches: [String] = []

    @Option(help: "Number of poller threads serving all queues.")
    var pollers: Int = 1

    @Option(help: ArgumentHelp("CPUs to pin pollers to, in order (e.g. 2,3).", valueName: "list"))
    var cpus: String?

    @Option(name: .customLong("io-workers"), help: "Most io_uring worker threads per poller, for I/O the kernel cannot start without blocking; they run on the CPUs no poller is pinned to.")
    var ioWorkers: UInt32 = IOWorkers.defaultMaxBounded

    @Option(name: .customLong("stop-timeout-ms"), help: "How long stopping a queue (GET_VRING_BASE, a disconnect, SIGTERM) waits for requests at the device before cancelling them; a quarter of it later, what is left fails with IOERR.")
    var stopTimeoutMilliseconds: UInt64 = Poller.defaultStopTimeoutMicros / 1000

    @Option(name: .customLong("poll-us"), help: "Microseconds a poller keeps spinning after its last work before it sleeps (0 = sleep at once).")
    var pollMicroseconds: UInt64 = 50

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "info"

    func run() throws {
        guard let level = Logger.Level(rawValue: logLevel) else { usageError("--log-level: unknown level '\(logLevel)'") }
        guard !exports.isEmpty else { usageError("nothing to serve: give at least one --export (see --help)") }
        guard (1...64).contains(pollers) else { usageError("--pollers: expected 1...64, got \(pollers)") }
        guard (1...1024).contains(ioWorkers) else { usageError("--io-workers: expected 1...1024, got \(ioWorkers)") }
        guard (1...3_600_000).contains(stopTimeoutMilliseconds) else {
            usageError("--stop-timeout-ms: expected 1...3600000, got \(stopTimeoutMilliseconds)")
        }
        var cpuList: [Int32] = []
        if let cpus {
            for c in cpus.split(separator: ",") {
                guard let n = Int32(c), n >= 0 else { usageError("--cpus: '\(c)' is not a CPU number") }
                cpuList.append(n)
            }
        }
        var specs: [ExportSpec] = []
        var switchSpecs: [SwitchSpec] = []
        do {
            for e in exports { specs.append(try ExportSpec.parse(e)) }
            try ExportSpec.validate(specs)
            for s in switches { switchSpecs.append(try SwitchSpec.parse(s)) }
            try SwitchSpec.validate(switchSpecs, exports: specs)
            for s in specs where s.poller != nil && s.poller! >= pollers {
                throw ExportSpecError(export: s.id, key: "poller", message: "no poller \(s.poller!) (there are \(pollers))")
            }
        } catch {
            usageError("\(error)")
        }

        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let logger = Logger(label: "vdevd")
        // Signals are taken synchronously by the main thread; every other thread inherits the mask.
        vdv_block_term_signals()

        let group: PollerGroup
        do { group = try PollerGroup(count: pollers, cpus: cpuList, pollMicroseconds: pollMicroseconds,
                                     maxWorkers: ioWorkers, stopTimeoutMicros: stopTimeoutMilliseconds * 1000) } catch {
            logger.critical("cannot start pollers: \(error)")
            throw ExitCode(1)
        }
        if !group.workers.cpus.isEmpty {
            logger.info("io_uring workers run on CPUs \(group.workers.cpus.map(String.init).joined(separator: ",")), at most \(ioWorkers) per poller")
        }
        var started: [Export] = []
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
        for s in specs {
            do {
                let e = try ExportFactory.make(s, pollers: group, logger: logger)
                e.start()
                started.append(e)
            } catch {
                logger.critical("\(error)")
                for e in started { e.stop() }
                for u in uplinks { u.stop() }
                group.stopAll()
                throw ExitCode(1)
            }
        }
        logger.info("vdevd ready: \(started.count) export(s), \(pollers) poller(s)")
        let sig = vdv_wait_term_signal()
        logger.info("signal \(sig): stopping")
        for e in started { e.stop() }
        for u in uplinks {
            u.stop()
            let c = u.port.counters
            logger.info("uplink \(u.tap.name) totals: \(PortCounters.Counter.allCases.filter { c.get($0) != 0 }.map { "\($0)=\(c.get($0))" }.joined(separator: " "))")
        }
        group.stopAll()
        logger.info("vdevd stopped")
    }

    func usageError(_ message: String) -> Never {
        FileHandleStderr.write("vdevd: \(message)\n")
        Glibc.exit(2)
    }
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
