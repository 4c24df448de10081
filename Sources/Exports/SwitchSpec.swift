import Net

/// A switch as the operator wrote it: `--switch id=NAME[,uplink=tap:IFNAME]`.
public struct SwitchSpec: Equatable {
    public var id: String
    /// The tap interface joining the host to the switch, if any.
    public var uplinkTap: String?

    public init(id: String, uplinkTap: String? = nil) {
        self.id = id
        self.uplinkTap = uplinkTap
    }

    public static let keys = ["id", "uplink"]

    public static func parse(_ text: String) throws -> SwitchSpec {
        var values: [String: String] = [:]
        for p in ExportSpec.split(text) {
            guard let eq = p.firstIndex(of: "=") else {
                throw SwitchSpecError(switchID: nil, key: p, message: "expected key=value, got '\(p)'")
            }
            let k = String(p[..<eq]), v = String(p[p.index(after: eq)...])
            guard keys.contains(k) else {
                throw SwitchSpecError(switchID: values["id"], key: k, message: "unknown key (known: \(keys.joined(separator: ", ")))")
            }
            guard values[k] == nil else { throw SwitchSpecError(switchID: values["id"], key: k, message: "given twice") }
            values[k] = v
        }
        guard let id = values["id"], !id.isEmpty else { throw SwitchSpecError(switchID: nil, key: "id", message: "required") }
        var s = SwitchSpec(id: id)
        if let u = values["uplink"] {
            guard u.hasPrefix("tap:"), case let name = String(u.dropFirst(4)), !name.isEmpty, name.utf8.count < 16,
                  !name.contains("/") else {
                throw SwitchSpecError(switchID: id, key: "uplink", message: "expected tap:IFNAME (1-15 characters), got '\(u)'")
            }
            s.uplinkTap = name
        }
        return s
    }

    /// Switch ids are unique, and every net export names one of them.
    public static func validate(_ switches: [SwitchSpec], exports: [ExportSpec]) throws {
        var ids = Set<String>()
        for s in switches {
            guard ids.insert(s.id).inserted else { throw SwitchSpecError(switchID: s.id, key: "id", message: "given by two --switch options") }
        }
        var taps = Set<String>()
        for s in switches {
            if let t = s.uplinkTap, !taps.insert(t).inserted {
                throw SwitchSpecError(switchID: s.id, key: "uplink", message: "tap \(t) is the uplink of two switches")
            }
        }
        for e in exports {
            guard let n = e.net else { continue }
            guard ids.contains(n.switchName) else {
                let known = ids.isEmpty ? "no --switch was given" : "known: \(ids.sorted().joined(separator: ", "))"
                throw ExportSpecError(export: e.id, key: "switch", message: "no switch '\(n.switchName)' (\(known))")
            }
        }
    }
}

/// A bad --switch option: names the switch (when its id is known) and the key.
public struct SwitchSpecError: Error, CustomStringConvertible, Equatable {
    public let switchID: String?
    public let key: String?
    public let message: String

    public var description: String {
        var s = "switch"
        if let switchID { s += " '\(switchID)'" }
        if let key { s += ", key '\(key)'" }
        return s + ": " + message
    }
}
