/// An export's state and counters at one moment, as the management socket and the metrics report them.
public struct ExportSnapshot: Codable, Equatable {
    public struct Queue: Codable, Equatable {
        public var index: Int
        /// The poller serving the queue now; nil while it is not running.
        public var poller: Int?
        /// QueueStats.Counter names to their values.
        public var counters: [String: UInt64]
    }

    public var id: String
    public var socket: String
    public var connected: Bool
    public var connections: Int
    public var queues: [Queue]
}
