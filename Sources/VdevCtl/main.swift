#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Foundation
import Service

/// `vdevctl`: the management socket's client, for people (tables) and scripts (--json).
struct VdevCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vdevctl",
        abstract: "Manage a running vdevd through its management socket.",
        usage: "vdevctl [--socket PATH] <subcommand> [--json]",
        discussion: "--socket PATH names the management socket (default \(DaemonSettings.defaultManagementSocket)); it may come before or after the subcommand. Tables for people, --json (list, stats) for scripts. Exit status 1 when vdevd refuses or cannot be reached, 2 for bad usage.",
        subcommands: [List.self, Add.self, Remove.self, Stats.self, Metrics.self]
    )

    struct Connection: ParsableArguments {
        @Option(help: ArgumentHelp("vdevd's management socket.", valueName: "path"))
        var socket: String = DaemonSettings.defaultManagementSocket

        func send(_ fields: [String: String]) throws -> ManagementReply {
            let reply: ManagementReply
            do { reply = try ManagementClient(path: socket).request(fields) } catch {
                fail("\(error)", status: 1)
            }
            guard reply.ok else { fail(reply.error ?? "failed", status: 1) }
            return reply
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the exports.")
        @OptionGroup var connection: Connection
        @Flag(help: "JSON for scripts.") var json = false

        func run() throws {
            let r = try connection.send(["command": "list"])
            let exports = r.exports ?? []
            if json { return printJSON(exports) }
            printTable(["ID", "TYPE", "SOCKET", "CONNECTED", "FROM"],
                       exports.map { [$0.id, $0.type, $0.socket, $0.connected ? "yes" : "no", $0.origin] })
        }
    }

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add an export (the keys of vdevd --export).")
        @OptionGroup var connection: Connection
        @Option(name: .customLong("export"), help: ArgumentHelp("TYPE,key=value,...", valueName: "spec"))
        var export: String

        func run() throws {
            _ = try connection.send(["command": "add", "export": export])
            print("added")
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove an export: in-flight requests complete, its VM is disconnected, its socket removed.")
        @OptionGroup var connection: Connection
        @Argument(help: "The export's id.") var id: String

        func run() throws {
            _ = try connection.send(["command": "remove", "id": id])
            print("removed \(id)")
        }
    }

    struct Stats: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Counters per export and queue, and per poller.")
        @OptionGroup var connection: Connection
        @Argument(help: "Only this export.") var id: String?
        @Flag(help: "JSON for scripts.") var json = false

        func run() throws {
            var req = ["command": "stats"]
            if let id { req["id"] = id }
            let r = try connection.send(req)
            guard let s = r.stats else { fail("no stats in the reply", status: 1) }
            if json { return printJSON(s) }
            var rows: [[String]] = []
            for e in s.exports {
                for q in e.queues {
                    let c = q.counters
                    rows.append([e.id, String(q.index), q.poller.map(String.init) ?? "-", "\(c["requests"] ?? 0)",
                                 "\(c["readBytes"] ?? 0)", "\(c["writtenBytes"] ?? 0)", "\(c["errors"] ?? 0)",
                                 "\(c["notifications"] ?? 0)", "\(c["kicks"] ?? 0)"])
                }
            }
            printTable(["EXPORT", "QUEUE", "POLLER", "REQUESTS", "READ-BYTES", "WRITTEN-BYTES", "ERRORS", "NOTIFICATIONS", "KICKS"], rows)
            print("")
            printTable(["POLLER", "CPU", "BUSY-S", "IDLE-S", "QUEUES", "EXPORTS"], s.pollers.map { p in
                [String(p.id), p.cpu.map(String.init) ?? "-", String(format: "%.3f", Double(p.busyMicros) / 1e6),
                 String(format: "%.3f", Double(p.idleMicros) / 1e6), String(p.queues), p.exports.joined(separator: ",")]
            })
        }
    }

    struct Metrics: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The counters in Prometheus text format.")
        @OptionGroup var connection: Connection

        func run() throws {
            let r = try connection.send(["command": "metrics"])
            print(r.metrics ?? "", terminator: "")
        }
    }
}

func printJSON<T: Encodable>(_ value: T) {
    let e = JSONEncoder()
    e.outputFormatting = [.sortedKeys, .prettyPrinted]
    print(String(decoding: (try? e.encode(value)) ?? Data(), as: UTF8.self))
}

func printTable(_ header: [String], _ rows: [[String]]) {
    let all = [header] + rows
    let widths = header.indices.map { i in all.map { $0[i].count }.max() ?? 0 }
    for r in all {
        print(r.enumerated().map { i, v in i == r.count - 1 ? v : v.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
            .joined(separator: "  "))
    }
}

func fail(_ message: String, status: Int32) -> Never {
    FileHandle.standardError.write(Data("vdevctl: \(message)\n".utf8))
    exit(status)
}

/// `vdevctl --socket PATH list` as well as `vdevctl list --socket PATH`: a --socket before the subcommand
/// is moved after it, where the subcommands declare it.
func arguments() -> [String] {
    var args = Array(CommandLine.arguments.dropFirst())
    var moved: [String] = []
    var i = 0
    while i < args.count, args[i].hasPrefix("-") {
        if args[i] == "--socket", i + 1 < args.count {
            moved += args[i...(i + 1)]
            args.removeSubrange(i...(i + 1))
        } else if args[i].hasPrefix("--socket=") {
            moved.append(args.remove(at: i))
        } else {
            i += 1
        }
    }
    guard !moved.isEmpty, i < args.count else { return args }
    args.insert(contentsOf: moved, at: i + 1)
    return args
}

// Usage errors exit with status 2, as vdevd's do.
do {
    var command = try VdevCtl.parseAsRoot(arguments())
    try command.run()
} catch {
    let code = VdevCtl.exitCode(for: error)
    if code == .success || error is ExitCode { VdevCtl.exit(withError: error) }
    FileHandle.standardError.write(Data((VdevCtl.fullMessage(for: error) + "\n").utf8))
    exit(2)
}
