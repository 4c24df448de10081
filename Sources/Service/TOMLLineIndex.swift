import Foundation

/// Where tables and keys are in a TOML file that has already parsed, so an error about a value can name its
/// line (TOMLKit gives positions only for syntax errors). A line scanner: table headers, `key =` lines, and
/// multi-line strings skipped.
struct TOMLLineIndex {
    struct Table {
        var line: Int
        var keys: [String: Int] = [:]
    }

    /// Header name to its occurrences (one for `[name]`, one per `[[name]]`); "" is the root table.
    private(set) var tables: [String: [Table]] = ["": [Table(line: 1)]]

    init(_ text: String) {
        var current = ("", 0)
        var inMultiline: String?
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let lineNo = n + 1
            let line = raw.drop(while: { $0 == " " || $0 == "\t" })
            if let delim = inMultiline {
                if String(line).components(separatedBy: delim).count % 2 == 0 { inMultiline = nil }
                continue
            }
            if line.hasPrefix("[") {
                let isArray = line.hasPrefix("[[")
                let inner = line.dropFirst(isArray ? 2 : 1).prefix(while: { $0 != "]" })
                let name = String(inner).trimmingCharacters(in: CharacterSet(charactersIn: " \t\"'"))
                tables[name, default: []].append(Table(line: lineNo))
                current = (name, tables[name]!.count - 1)
                continue
            }
            guard let eq = line.firstIndex(of: "="), !line.hasPrefix("#") else { continue }
            let key = String(line[..<eq]).trimmingCharacters(in: CharacterSet(charactersIn: " \t\"'"))
            if tables[current.0]![current.1].keys[key] == nil { tables[current.0]![current.1].keys[key] = lineNo }
            let value = line[line.index(after: eq)...]
            for delim in ["\"\"\"", "'''"] where String(value).components(separatedBy: delim).count == 2 {
                inMultiline = delim
            }
        }
    }

    /// The line of `key` in the `index`th occurrence of table `name`, else the table's header line.
    func line(table name: String, index: Int = 0, key: String? = nil) -> Int? {
        guard let occurrences = tables[name], index < occurrences.count else { return nil }
        let t = occurrences[index]
        if let key, let l = t.keys[key] { return l }
        return t.line
    }
}

