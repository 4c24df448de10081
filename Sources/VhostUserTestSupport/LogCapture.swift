#if canImport(Glibc)
import Glibc
#endif
import Logging

/// Collects every log line an export writes, so tests can assert on what was logged.
public final class LogStore: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var lines: [String] = []

    public init() { pthread_mutex_init(&mutex, nil) }

    public func append(_ s: String) {
        pthread_mutex_lock(&mutex)
        lines.append(s)
        pthread_mutex_unlock(&mutex)
    }

    public var all: [String] {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return lines
    }

    public func contains(_ s: String) -> Bool { all.contains { $0.contains(s) } }
}

/// A swift-log handler writing "level [metadata] message" lines into a LogStore.
public struct CaptureLogHandler: LogHandler {
    public let store: LogStore
    public var logLevel: Logger.Level = .debug
    public var metadata: Logger.Metadata = [:]

    public init(store: LogStore) { self.store = store }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var md = metadata
        if let m = event.metadata { md.merge(m) { $1 } }
        let tags = md.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        store.append("\(event.level) [\(tags)] \(event.message)")
    }
}
