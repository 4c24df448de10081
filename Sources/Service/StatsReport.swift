import Exports

/// Every counter the daemon keeps, at one moment: per export and queue, and per poller. What `stats`
/// answers on the management socket and what the metrics are made from.
public struct StatsReport: Codable, Equatable {
    public struct Export: Codable, Equatable {
        public var id: String
        public var type: String
        public var socket: String
        public var connected: Bool
        public var connections: Int
        public var queues: [ExportSnapshot.Queue]

        /// A counter summed over the export's queues.
        public func total(_ counter: String) -> UInt64 { queues.reduce(0) { $0 + ($1.counters[counter] ?? 0) } }
    }

    public struct Poller: Codable, Equatable {
        public var id: Int
        public var cpu: Int32?
        public var busyMicros: UInt64
        public var idleMicros: UInt64
        /// Queues it serves now.
        public var queues: Int
        /// Exports with a queue on it now.
        public var exports: [String]
    }

    public var exports: [Export]
    public var pollers: [Poller]

    public init(exports: [Export], pollers: [Poller]) {
        self.exports = exports
        self.pollers = pollers
    }

    public static let empty = StatsReport(exports: [], pollers: [])
}
