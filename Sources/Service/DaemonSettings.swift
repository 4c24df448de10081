import Exports
import Logging

/// The daemon's own settings: the `[daemon]` table of the config file and the command line's flags, under the
/// same names. Unset fields fall back to the defaults; the command line wins over the file.
public struct DaemonSettings: Equatable {
    public var pollers: Int?
    public var cpus: [Int32]?
    public var ioWorkers: UInt32?
    public var stopTimeoutMs: UInt64?
    public var pollUs: UInt64?
    public var logLevel: Logger.Level?
    public var logFormat: LogFormat?
    /// The management socket's path; "none" turns it off.
    public var managementSocket: String?
    /// Where metrics are served over HTTP: `HOST:PORT` or a Unix socket path.
    public var metrics: MetricsAddress?

    public enum LogFormat: String, Equatable { case text, json }

    public static let defaultManagementSocket = "/run/vdevd/vdevd.sock"

    public struct Key {
        public let name: String
        public let help: String
    }

    /// Every `[daemon]` key; each is also a command-line flag `--NAME`.
    public static let keys: [Key] = [
        Key(name: "pollers", help: "poller threads serving all queues, 1-64 (default 1)"),
        Key(name: "cpus", help: "CPUs to pin pollers to, in order, e.g. \"2,3\" or [2, 3]"),
        Key(name: "io-workers", help: "most io_uring workers per poller, 1-1024"),
        Key(name: "stop-timeout-ms", help: "how long a stopping queue waits for the device, 1-3600000"),
        Key(name: "poll-us", help: "microseconds a poller spins after its last work (default 50)"),
        Key(name: "log-level", help: "trace, debug, info, notice, warning, error or critical"),
        Key(name: "log-format", help: "text or json (one JSON object a line)"),
        Key(name: "management-socket", help: "management socket path, or none (default \(defaultManagementSocket))"),
        Key(name: "metrics", help: "serve Prometheus metrics over HTTP at HOST:PORT or a Unix socket path"),
    ]

    public init() {}

    /// A bad value: the key and what was expected.
    public struct ValueError: Error, Equatable {
        public let key: String
        public let message: String
    }

    /// The one parser of daemon keys, for the file and the command line.
    public mutating func set(_ key: String, _ value: String) throws {
        func fail(_ m: String) -> ValueError { ValueError(key: key, message: m) }
        func integer<T: FixedWidthInteger>(_ range: ClosedRange<T>) throws -> T {
            guard let n = T(value), range.contains(n) else {
                throw fail("expected an integer in \(range.lowerBound)...\(range.upperBound), got '\(value)'")
            }
            return n
        }
        switch key {
        case "pollers": pollers = try integer(1...64)
        case "io-workers": ioWorkers = try integer(1...1024)
        case "stop-timeout-ms": stopTimeoutMs = try integer(1...3_600_000)
        case "poll-us": pollUs = try integer(0...1_000_000)
        case "cpus":
            var list: [Int32] = []
            for c in value.split(separator: ",", omittingEmptySubsequences: false) {
                guard let n = Int32(c.trimmingSpaces), n >= 0 else { throw fail("'\(c)' is not a CPU number") }
                list.append(n)
            }
            cpus = list
        case "log-level":
            guard let l = Logger.Level(rawValue: value) else {
                throw fail("unknown level '\(value)' (trace, debug, info, notice, warning, error, critical)")
            }
            logLevel = l
        case "log-format":
            guard let f = LogFormat(rawValue: value) else { throw fail("expected text or json, got '\(value)'") }
            logFormat = f
        case "management-socket":
            guard !value.isEmpty else { throw fail("expected a path or none") }
            managementSocket = value
        case "metrics":
            guard let a = MetricsAddress(value) else {
                throw fail("expected HOST:PORT (an IP address and a port) or an absolute Unix socket path, got '\(value)'")
            }
            metrics = a
        default:
            throw fail("unknown key (known: \(Self.keys.map(\.name).joined(separator: ", ")))")
        }
    }

    /// These settings with every field `other` sets taken from it.
    public func overridden(by other: DaemonSettings) -> DaemonSettings {
        var s = self
        if let v = other.pollers { s.pollers = v }
        if let v = other.cpus { s.cpus = v }
        if let v = other.ioWorkers { s.ioWorkers = v }
        if let v = other.stopTimeoutMs { s.stopTimeoutMs = v }
        if let v = other.pollUs { s.pollUs = v }
        if let v = other.logLevel { s.logLevel = v }
        if let v = other.logFormat { s.logFormat = v }
        if let v = other.managementSocket { s.managementSocket = v }
        if let v = other.metrics { s.metrics = v }
        return s
    }

    /// The management socket to create, if any: the one set, else the default when `byDefault`.
    public func managementSocketPath(byDefault: Bool) -> String? {
        let p = managementSocket ?? (byDefault ? Self.defaultManagementSocket : nil)
        return p == "none" ? nil : p
    }
}

/// Where the metrics listener binds.
public enum MetricsAddress: Equatable, CustomStringConvertible {
    case tcp(host: String, port: UInt16)
    case unix(String)

    public init?(_ text: String) {
        if text.hasPrefix("/") {
            self = .unix(text)
            return
        }
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { return nil }
        self = .tcp(host: host, port: port)
    }

    public var description: String {
        switch self {
        case .tcp(let h, let p): return h.contains(":") ? "[\(h)]:\(p)" : "\(h):\(p)"
        case .unix(let p): return p
        }
    }
}

extension Substring {
    var trimmingSpaces: Substring {
        var s = self
        while s.first == " " { s = s.dropFirst() }
        while s.last == " " { s = s.dropLast() }
        return s
    }
}
