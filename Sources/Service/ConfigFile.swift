import Exports
import Foundation
import TOMLKit

/// A config file: `[daemon]` with the daemon's flags, and one `[[export]]` table per export with exactly the
/// keys of `--export` (plus `type`). Values may be TOML strings, integers or booleans; they reach the same
/// parsers as the command line's text.
public struct ConfigFile: Equatable {
    public var daemon = DaemonSettings()
    public var exports: [ExportEntry] = []
    /// `[[switch]]` tables: the switches net exports plug into (`id`, `uplink`), as `--switch` gives them.
    public var switches: [SwitchSpec] = []

    public init() {}

    public static func load(path: String) throws -> ConfigFile {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw ConfigError(file: path, line: nil, table: nil, key: nil, message: "cannot read: \(error.localizedDescription)")
        }
        return try parse(text, file: path)
    }

    public static func parse(_ text: String, file: String) throws -> ConfigFile {
        let root: TOMLTable
        do { root = try TOMLTable(string: text) } catch let e as TOMLParseError {
            throw ConfigError(file: file, line: e.source.begin.line, table: nil, key: nil, message: "not valid TOML: \(e.description)")
        }
        let lines = TOMLLineIndex(text)
        var config = ConfigFile()
        for key in root.keys {
            let value = root[key]!
            switch key {
            case "daemon":
                guard let t = value.table else {
                    throw ConfigError(file: file, line: lines.line(table: "", key: key), table: nil, key: key,
                                      message: "expected a [daemon] table")
                }
                config.daemon = try daemonSettings(t, file: file, lines: lines)
            case "export":
                guard let a = value.array else {
                    throw ConfigError(file: file, line: lines.line(table: "", key: key), table: nil, key: key,
                                      message: "expected [[export]] tables")
                }
                for i in 0..<a.count {
                    config.exports.append(try export(a[i], index: i, file: file, lines: lines))
                }
            case "switch":
                guard let a = value.array else {
                    throw ConfigError(file: file, line: lines.line(table: "", key: key), table: nil, key: key,
                                      message: "expected [[switch]] tables")
                }
                for i in 0..<a.count { config.switches.append(try switchSpec(a[i], index: i, file: file, lines: lines)) }
            default:
                throw ConfigError(file: file, line: lines.line(table: key) ?? lines.line(table: "", key: key), table: nil,
                                  key: key, message: "unknown table (known: [daemon], [[export]], [[switch]])")
            }
        }
        return config
    }

    private static func daemonSettings(_ t: TOMLTable, file: String, lines: TOMLLineIndex) throws -> DaemonSettings {
        var s = DaemonSettings()
        for key in t.keys {
            func fail(_ m: String) -> ConfigError {
                ConfigError(file: file, line: lines.line(table: "daemon", key: key), table: "[daemon]", key: key, message: m)
            }
            let v = t[key]!
            var text: String
            if key == "cpus", let a = v.array {
                var parts: [String] = []
                for i in 0..<a.count {
                    guard let n = a[i].int else { throw fail("expected CPU numbers, got \(article(a[i].type))") }
                    parts.append(String(n))
                }
                text = parts.joined(separator: ",")
            } else {
                do { text = try scalarText(v, octal: false) } catch let m as ValueTypeError { throw fail(m.message) }
            }
            do { try s.set(key, text) } catch let e as DaemonSettings.ValueError { throw fail(e.message) }
        }
        return s
    }

    private static func export(_ value: TOMLValueConvertible, index: Int, file: String, lines: TOMLLineIndex) throws -> ExportEntry {
        let header = lines.line(table: "export", index: index) ?? lines.line(table: "", key: "export")
        guard let t = value.table else {
            throw ConfigError(file: file, line: header, table: "[[export]] #\(index + 1)", key: nil, message: "expected a table")
        }
        let id = t["id"]?.string
        let tableName = "[[export]] #\(index + 1)" + (id.map { " '\($0)'" } ?? "")
        func fail(_ key: String?, _ m: String) -> ConfigError {
            ConfigError(file: file, line: lines.line(table: "export", index: index, key: key) ?? header, table: tableName,
                        key: key, message: m)
        }
        guard let typeValue = t["type"] else {
            throw fail("type", "required (\(ExportSpec.Kind.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", ")))")
        }
        guard let typeName = typeValue.string else { throw fail("type", "expected a string, got \(article(typeValue.type))") }
        let keyTable = ExportSpec.Kind(rawValue: typeName).flatMap { ExportSpec.keys[$0] } ?? []
        var pairs: [(key: String, value: String)] = []
        for key in t.keys where key != "type" {
            let octal = keyTable.first(where: { $0.name == key })?.format == .octal
            do { pairs.append((key, try scalarText(t[key]!, octal: octal))) } catch let m as ValueTypeError {
                throw fail(key, m.message)
            }
        }
        do {
            let spec = try ExportSpec.parse(type: typeName, pairs: pairs)
            return ExportEntry(spec: spec, origin: .file(file, line: header, index: index + 1))
        } catch let e as ExportSpecError {
            throw fail(e.key ?? (e.message.hasPrefix("unknown export type") ? "type" : nil), e.message)
        }
    }

    /// One `[[switch]]` table, parsed by the same code as `--switch`.
    private static func switchSpec(_ value: TOMLValueConvertible, index: Int, file: String, lines: TOMLLineIndex) throws -> SwitchSpec {
        let header = lines.line(table: "switch", index: index) ?? lines.line(table: "", key: "switch")
        guard let t = value.table else {
            throw ConfigError(file: file, line: header, table: "[[switch]] #\(index + 1)", key: nil, message: "expected a table")
        }
        let tableName = "[[switch]] #\(index + 1)" + (t["id"]?.string.map { " '\($0)'" } ?? "")
        func fail(_ key: String?, _ m: String) -> ConfigError {
            ConfigError(file: file, line: lines.line(table: "switch", index: index, key: key) ?? header, table: tableName, key: key, message: m)
        }
        var parts: [String] = []
        for key in t.keys {
            let text: String
            do { text = try scalarText(t[key]!, octal: false) } catch let m as ValueTypeError { throw fail(key, m.message) }
            parts.append("\(key)=\(text.replacingOccurrences(of: ",", with: ",,"))")
        }
        do { return try SwitchSpec.parse(parts.joined(separator: ",")) } catch let e as SwitchSpecError {
            throw fail(e.key, e.message)
        }
    }

    struct ValueTypeError: Error { let message: String }

    /// A TOML string, integer or boolean as the command line would write it.
    static func scalarText(_ v: TOMLValueConvertible, octal: Bool) throws -> String {
        switch v.type {
        case .string: return v.string!
        case .int where octal:
            let n = v.int!
            guard (0...0o777).contains(n) else {
                throw ValueTypeError(message: "\(n) is not a permission mode: write \"0\(n)\" or 0o\(n) (octal)")
            }
            return "0" + String(n, radix: 8)
        case .int: return String(v.int!)
        case .bool: return v.bool! ? "on" : "off"
        default: throw ValueTypeError(message: "expected a string, an integer or a boolean, got \(article(v.type))")
        }
    }
}

/// "an integer", "a string": a TOML type as an error message names it.
func article(_ t: TOMLType) -> String {
    let d = "\(t)"
    return (d.first.map { "aeiou".contains($0) } ?? false ? "an " : "a ") + d
}
