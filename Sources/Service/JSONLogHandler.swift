#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging

/// Log lines as JSON objects, one a line on stderr, for log shippers: time, level, message and every
/// metadata field (`export` on every export's line).
public struct JSONLogHandler: LogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    let label: String

    public init(label: String) { self.label = label }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let level = event.level, message = event.message, extra = event.metadata
        var fields: [String: String] = ["time": ISO8601DateFormatter.string(from: Date(), timeZone: TimeZone(identifier: "UTC")!,
                                                                           formatOptions: [.withInternetDateTime, .withFractionalSeconds]),
                                        "level": level.rawValue, "logger": label, "message": "\(message)"]
        for (k, v) in metadata.merging(extra ?? [:], uniquingKeysWith: { _, b in b }) { fields[k] = "\(v)" }
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        guard var bytes = try? e.encode(fields) else { return }
        bytes.append(10)
        _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    }
}
