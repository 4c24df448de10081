import Exports

/// An export and where the operator wrote it, so an error about it can point there.
public struct ExportEntry: Equatable {
    public enum Origin: Equatable, CustomStringConvertible {
        /// The nth `--export` (from 1).
        case commandLine(Int)
        /// The nth `[[export]]` table (from 1) of a file, at a line.
        case file(String, line: Int?, index: Int)
        /// A management socket `add` (vdevctl add).
        case management

        public var description: String {
            switch self {
            case .commandLine(let n): return "--export #\(n)"
            case .file(let f, let line, let n): return "\(f)\(line.map { ":\($0)" } ?? ""): [[export]] #\(n)"
            case .management: return "management add"
            }
        }
    }

    public var spec: ExportSpec
    public var origin: Origin

    public init(spec: ExportSpec, origin: Origin) {
        self.spec = spec
        self.origin = origin
    }

    /// Checks a set of exports together: ids and socket paths unique (naming both places), then the rules
    /// `ExportSpec.validate` keeps (vsock CIDs, groups). The error names the later of the two.
    public static func validate(_ entries: [ExportEntry]) throws {
        var ids: [String: Origin] = [:], sockets: [String: Origin] = [:]
        for e in entries {
            if let first = ids[e.spec.id] {
                throw EntryError(entry: e, key: "id", message: "'\(e.spec.id)' is already used (\(first))")
            }
            ids[e.spec.id] = e.origin
            if let first = sockets[e.spec.endpoint] {
                throw EntryError(entry: e, key: e.spec.endpointKey, message: "\(e.spec.endpoint) is already used (\(first))")
            }
            sockets[e.spec.endpoint] = e.origin
        }
        do {
            try ExportSpec.validate(entries.map(\.spec))
        } catch let err as ExportSpecError {
            let e = entries.last(where: { $0.spec.id == err.export }) ?? entries.last!
            throw EntryError(entry: e, key: err.key, message: err.message)
        }
    }
}

/// An error about one export, with where it was written.
public struct EntryError: Error, CustomStringConvertible {
    public let entry: ExportEntry
    public let key: String?
    public let message: String

    public init(entry: ExportEntry, key: String?, message: String) {
        self.entry = entry
        self.key = key
        self.message = message
    }

    public var description: String {
        var s = "\(entry.origin) '\(entry.spec.id)'"
        if let key { s += ", key '\(key)'" }
        return s + ": " + message
    }
}
