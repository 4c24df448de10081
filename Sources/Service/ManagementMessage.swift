import Exports
import Foundation

/// The management socket's protocol: one JSON object a line each way.
///
/// Requests: `{"command":"list"}`, `{"command":"add","export":"TYPE,key=value,..."}` (or `"export"` as an
/// object `{"type":"vhost-user-blk","id":"d0",...}` with the same keys), `{"command":"remove","id":"d0"}`,
/// `{"command":"stats"}` or `{"command":"stats","id":"d0"}`, `{"command":"metrics"}`.
/// Replies: `{"ok":true,...}` with `exports`, `stats` or `metrics`, or `{"ok":false,"error":"..."}`.
public enum ManagementRequest: Equatable {
    case list
    case add(ExportSpec)
    case remove(String)
    case stats(String?)
    case metrics

    /// Longest request line accepted.
    public static let maxLine = 64 * 1024

    public struct BadRequest: Error, CustomStringConvertible {
        public let description: String
    }

    /// A JSON value in an export object: decoded as what it is, so 1 stays a number and true a boolean.
    enum Scalar: Decodable {
        case string(String), int(Int), bool(Bool), other(String)

        init(from decoder: Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let b = try? c.decode(Bool.self) { self = .bool(b) }
            else if let i = try? c.decode(Int.self) { self = .int(i) }
            else if let s = try? c.decode(String.self) { self = .string(s) }
            else { self = .other(c.decodeNil() ? "null" : "an array, an object or a fraction") }
        }
    }

    enum ExportField: Decodable {
        case text(String), object([String: Scalar])

        init(from decoder: Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let s = try? c.decode(String.self) { self = .text(s) } else { self = .object(try c.decode([String: Scalar].self)) }
        }
    }

    struct Wire: Decodable {
        var command: String?
        var id: String?
        var export: ExportField?
    }

    public static func decode(_ line: [UInt8]) throws -> ManagementRequest {
        let w: Wire
        do { w = try JSONDecoder().decode(Wire.self, from: Data(line)) } catch {
            throw BadRequest(description: "expected a JSON object like {\"command\":\"list\"}")
        }
        guard let command = w.command else {
            throw BadRequest(description: "expected an object with a \"command\" (list, add, remove, stats, metrics)")
        }
        switch command {
        case "list": return .list
        case "metrics": return .metrics
        case "stats": return .stats(w.id)
        case "remove":
            guard let id = w.id else { throw BadRequest(description: "remove: \"id\" (a string) is required") }
            return .remove(id)
        case "add":
            switch w.export {
            case .text(let text)?: return .add(try ExportSpec.parse(text))
            case .object(let fields)?:
                guard case .string(let type)? = fields["type"] else {
                    throw BadRequest(description: "add: export \"type\" (a string) is required")
                }
                let keyTable = ExportSpec.Kind(rawValue: type).flatMap { ExportSpec.keys[$0] } ?? []
                var pairs: [(key: String, value: String)] = []
                let id: String? = { if case .string(let s)? = fields["id"] { return s }; return nil }()
                for key in fields.keys.sorted() where key != "type" {
                    let octal = keyTable.first(where: { $0.name == key })?.format == .octal
                    switch fields[key]! {
                    case .string(let s): pairs.append((key, s))
                    case .bool(let b): pairs.append((key, b ? "on" : "off"))
                    case .int(let i) where octal: pairs.append((key, "0" + String(i, radix: 8)))
                    case .int(let i): pairs.append((key, String(i)))
                    case .other(let what):
                        throw ExportSpecError(export: id, key: key, message: "expected a string, an integer or a boolean, got \(what)")
                    }
                }
                return .add(try ExportSpec.parse(type: type, pairs: pairs))
            case nil:
                throw BadRequest(description: "add: \"export\" is required: \"TYPE,key=value,...\" or an object of keys")
            }
        default:
            throw BadRequest(description: "unknown command '\(command)' (list, add, remove, stats, metrics)")
        }
    }

}

/// A reply line.
public struct ManagementReply: Codable, Equatable {
    public struct Listed: Codable, Equatable {
        public var id: String
        public var type: String
        public var socket: String
        public var connected: Bool
        /// Where it was defined: `--export #1`, `FILE:LINE: [[export]] #2`, `add`.
        public var origin: String
    }

    public var ok: Bool
    public var error: String?
    public var exports: [Listed]?
    public var stats: StatsReport?
    public var metrics: String?

    public init(ok: Bool, error: String? = nil, exports: [Listed]? = nil, stats: StatsReport? = nil, metrics: String? = nil) {
        self.ok = ok
        self.error = error
        self.exports = exports
        self.stats = stats
        self.metrics = metrics
    }

    public static func failure(_ message: String) -> ManagementReply { ManagementReply(ok: false, error: message) }

    public func encoded() -> [UInt8] {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return Array((try? e.encode(self)) ?? Data(#"{"ok":false,"error":"cannot encode reply"}"#.utf8)) + [10]
    }
}
