import Blk
import Net
import Vsock

/// An export as the operator wrote it: `TYPE,key=value,...` (a literal comma in a value is written `,,`,
/// as in QEMU). Parsing validates every key and value before anything is created. An export is a device part
/// (`blk`, `vsock` or `net` options) and a transport part (`transport`); the type names both.
public struct ExportSpec: Equatable {
    public enum Kind: String, CaseIterable {
        case vhostUserBlk = "vhost-user-blk"
        case vhostUserVsock = "vhost-user-vsock"
        case vhostUserNet = "vhost-user-net"
        case vduseBlk = "vduse-blk"
        case vduseNet = "vduse-net"

        public var device: DeviceKind {
            switch self {
            case .vhostUserBlk, .vduseBlk: return .blk
            case .vhostUserVsock: return .vsock
            case .vhostUserNet, .vduseNet: return .net
            }
        }

        public var transport: TransportSpec.Kind {
            switch self {
            case .vduseBlk, .vduseNet: return .vduse
            default: return .vhostUser
            }
        }
    }

    public enum DeviceKind { case blk, vsock, net }

    public struct Key {
        public let name: String
        public let help: String
        public let required: Bool
        /// How a typed value (a TOML or JSON integer) becomes the key's text: socket-mode's integer is octal.
        public let format: Format

        public enum Format { case plain, octal }

        public init(name: String, help: String, required: Bool, format: Format = .plain) {
            self.name = name
            self.help = help
            self.required = required
            self.format = format
        }
    }

    /// Keys every vhost-user export has: its socket file, who may connect to it, its poller.
    public static let socketKeys: [Key] = [
        Key(name: "socket-mode", help: "socket permissions, octal (default 0600)", required: false, format: .octal),
        Key(name: "socket-owner", help: "socket owner, user name or uid (default: vdevd's)", required: false),
        Key(name: "socket-group", help: "socket group, group name or gid (default: vdevd's)", required: false),
    ]

    /// Limits on what a frontend can make vdevd hold (vhost-user exports: VDUSE memory is the kernel's).
    public static let limitKeys: [Key] = [
        Key(name: "max-guest-memory", help: "cap on mapped guest memory, e.g. 64G (default: no cap)", required: false),
    ]

    /// The device keys of each device type; an export type's keys are its device's and its transport's
    /// (`keys`), required ones first.
    static let deviceKeys: [DeviceKind: [Key]] = [
        .blk: [
            Key(name: "id", help: "export name: logs, stats, disk serial (GET_ID)", required: true),
            Key(name: "path", help: "image file or block device", required: true),
            Key(name: "num-queues", help: "request queues, 1-64 (default 1)", required: false),
            Key(name: "queue-size", help: "largest virtqueue, 64-32768 (default 256)", required: false),
            Key(name: "readonly", help: "on|off: read-only device and file (default off)", required: false),
            Key(name: "direct", help: "on|off: O_DIRECT (default off)", required: false),
            Key(name: "logical-block-size", help: "512|4096 (default 512)", required: false),
            Key(name: "write-cache", help: "on|off: initial write-back cache (default on)", required: false),
            Key(name: "engine", help: "io_uring|aio (default io_uring)", required: false),
            Key(name: "inline-io", help: "auto|off: inline I/O for tmpfs images (auto)", required: false),
            Key(name: "fixed-buffers", help: "auto|off: register allocated guest RAM, direct=on (auto)", required: false),
            Key(name: "poller", help: "poller index (default: least loaded)", required: false),
        ],
        .vsock: [
            Key(name: "id", help: "export name: logs and stats", required: true),
            Key(name: "guest-cid", help: "the guest's CID, 3 or more", required: true),
            Key(name: "uds-path", help: "host side: CONNECT <port> here; <path>_<P>", required: true),
            Key(name: "tx-buffer-size", help: "bytes buffered per connection (262144)", required: false),
            Key(name: "stall-timeout-ms", help: "log a connection stuck this long, 0 off (5000)", required: false),
            Key(name: "groups", help: "a+b: siblings reachable by CID", required: false),
            Key(name: "queue-size", help: "largest virtqueue, 64-32768 (default 256)", required: false),
            Key(name: "poller", help: "poller index (default: its group's)", required: false),
        ],
        .net: NetExportSpec.keys,
    ]

    /// Device keys a transport cannot carry, with the reason the operator is told.
    static let refusedKeys: [Kind: [String: String]] = [
        .vduseBlk: [
            "write-cache": "VDUSE config space is read-only, so the guest cannot switch the write cache "
                + "(VIRTIO_BLK_F_CONFIG_WCE is not offered); a vduse-blk device is write-back and flushes on request",
            "fixed-buffers": "VDUSE memory is the kernel's bounce buffer, mapped per IOVA range; it is not registered with io_uring",
        ],
        .vduseNet: [
            "num-queues": "VDUSE refuses a net device with a control queue, and virtio-net needs one for more than one "
                + "queue pair (VIRTIO_NET_F_MQ); a vduse-net device has one rx/tx pair",
        ],
    ]

    /// Every key of each export type, one table per type: the command line (`--export`), the config file
    /// (`[[export]]`) and the management socket (`add`) all parse through `parse(kind:pairs:)` with these.
    public static let keys: [Kind: [Key]] = {
        var out: [Kind: [Key]] = [:]
        for kind in Kind.allCases {
            let refused = refusedKeys[kind] ?? [:]
            let device = deviceKeys[kind.device]!.filter { refused[$0.name] == nil }
            let transport = TransportSpec.keys(kind.transport)
            out[kind] = device.filter(\.required) + transport.filter(\.required)
                + device.filter { !$0.required } + transport.filter { !$0.required }
        }
        return out
    }()

    public var kind: Kind
    public var id: String
    /// Options of a vhost-user-blk export (for other kinds only id is meaningful).
    public var blk: BlkOptions
    /// Options of a vhost-user-vsock export.
    public var vsock: VsockOptions?
    /// Options of a vhost-user-net export.
    public var net: NetOptions?
    /// How the device reaches its driver.
    public var transport: TransportSpec
    public var poller: Int?
    /// Cap on the guest memory a frontend can make this export map (current and retiring tables together).
    public var maxGuestMemory: UInt64?

    public init(kind: Kind, blk: BlkOptions, transport: TransportSpec) {
        self.kind = kind
        self.id = blk.id
        self.blk = blk
        self.transport = transport
    }

    /// A vhost-user export on `socket`.
    public init(kind: Kind, blk: BlkOptions, socket: String) {
        self.init(kind: kind, blk: blk, transport: .vhostUser(socket: socket, access: SocketAccess()))
    }

    /// The socket path, or the VDUSE device file: unique among exports.
    public var endpoint: String { transport.endpoint }

    /// A vhost-user export's socket ("" for other transports).
    public var socket: String {
        get { if case .vhostUser(let s, _) = transport { return s } else { return "" } }
        set { if case .vhostUser(_, let a) = transport { transport = .vhostUser(socket: newValue, access: a) } }
    }

    /// Who may connect to a vhost-user export's socket: applied before it accepts anything (see `UnixListener`).
    public var socketAccess: SocketAccess {
        get { if case .vhostUser(_, let a) = transport { return a } else { return SocketAccess() } }
        set { if case .vhostUser(let s, _) = transport { transport = .vhostUser(socket: s, access: newValue) } }
    }
    public var socketMode: UInt32 {
        get { socketAccess.mode }
        set { socketAccess.mode = newValue }
    }
    public var socketOwner: UInt32? {
        get { socketAccess.owner }
        set { socketAccess.owner = newValue }
    }
    public var socketGroup: UInt32? {
        get { socketAccess.group }
        set { socketAccess.group = newValue }
    }

    /// Help text listing every export type and key.
    public static var helpText: String {
        var out = ""
        for kind in Kind.allCases {
            out += "\(kind.rawValue):\n"
            for k in keys[kind]! {
                let left = "  \(k.name)\(k.required ? " (required)" : "")"
                out += left + String(repeating: " ", count: max(1, 30 - left.count))
                out += k.help + "\n"
            }
        }
        return out
    }

    /// Splits on single commas; `,,` is a literal comma.
    static func split(_ s: String) -> [String] {
        var parts: [String] = []
        var cur = ""
        let chars = Array(s)
        var i = 0
        while i < chars.count {
            if chars[i] == "," {
                if i + 1 < chars.count && chars[i + 1] == "," { cur.append(","); i += 2; continue }
                parts.append(cur)
                cur = ""
            } else {
                cur.append(chars[i])
            }
            i += 1
        }
        parts.append(cur)
        return parts
    }

    /// Parses the command line's form, `TYPE,key=value,...`.
    public static func parse(_ text: String) throws -> ExportSpec {
        let parts = split(text)
        var pairs: [(key: String, value: String)] = []
        for p in parts.dropFirst() {
            guard let eq = p.firstIndex(of: "=") else {
                throw ExportSpecError(export: nil, key: p, message: "expected key=value, got '\(p)'")
            }
            pairs.append((String(p[..<eq]), String(p[p.index(after: eq)...])))
        }
        return try parse(type: parts[0], pairs: pairs)
    }

    /// The one parser of export keys: the command line, the config file and the management socket give
    /// the type and the key/value pairs in the order written.
    public static func parse(type typeName: String, pairs: [(key: String, value: String)]) throws -> ExportSpec {
        let id = pairs.first(where: { $0.key == "id" })?.value
        guard let kind = Kind(rawValue: typeName) else {
            throw ExportSpecError(export: id, key: nil,
                                  message: "unknown export type '\(typeName)' (known: \(Kind.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        var values: [String: String] = [:]
        let known = Set(keys[kind]!.map(\.name))
        for (k, v) in pairs {
            if values[k] != nil { throw ExportSpecError(export: id, key: k, message: "given twice") }
            if let why = refusedKeys[kind]?[k] {
                throw ExportSpecError(export: id, key: k, message: "\(kind.rawValue) cannot carry it: \(why)")
            }
            if kind.transport == .vduse, TransportSpec.keys(.vhostUser).contains(where: { $0.name == k }) {
                throw ExportSpecError(export: id, key: k, message: "\(kind.rawValue) has no socket: the device appears "
                                      + "in the kernel (vdpa dev add name NAME mgmtdev vduse); use name=NAME")
            }
            guard known.contains(k) else {
                throw ExportSpecError(export: id, key: k,
                                      message: "unknown key for \(kind.rawValue) (known: \(keys[kind]!.map(\.name).joined(separator: ", ")))")
            }
            values[k] = v
        }
        for k in keys[kind]! where k.required && (values[k.name] ?? "").isEmpty {
            throw ExportSpecError(export: id, key: k.name, message: "required")
        }
        let v = Values(export: id!, values: values)
        var spec: ExportSpec
        switch kind.device {
        case .blk: spec = try parseBlk(id: id!, values: values, v)
        case .vsock: spec = try parseVsock(id: id!, values: values, v)
        case .net: spec = try NetExportSpec.parse(id: id!, values: values, v)
        }
        spec.kind = kind
        switch kind.transport {
        case .vhostUser:
            spec.transport = .vhostUser(socket: values["socket"]!, access: SocketAccess())
        case .vduse:
            let name = values["name"]!
            guard TransportSpec.validVduseName(name) else {
                throw ExportSpecError(export: id, key: "name",
                                      message: "expected up to 63 letters, digits, '-', '_' or '.', got '\(name)'")
            }
            spec.transport = .vduse(name: name)
        }
        if let m = values["socket-mode"] {
            guard let mode = UInt32(m, radix: 8), mode <= 0o777 else {
                throw ExportSpecError(export: id, key: "socket-mode", message: "expected octal permissions like 0660, got '\(m)'")
            }
            spec.socketMode = mode
        }
        let mode = spec.socketMode
        spec.vsock?.socketMode = mode
        if let o = values["socket-owner"] {
            guard let uid = Account.uid(o) else {
                throw ExportSpecError(export: id, key: "socket-owner", message: "no user '\(o)' (a user name or a uid)")
            }
            spec.socketOwner = uid
        }
        if let g = values["socket-group"] {
            guard let gid = Account.gid(g) else {
                throw ExportSpecError(export: id, key: "socket-group", message: "no group '\(g)' (a group name or a gid)")
            }
            spec.socketGroup = gid
        }
        spec.poller = try v.int("poller", 0...1023)
        spec.maxGuestMemory = try v.size("max-guest-memory")
        return spec
    }

    private static func parseBlk(id: String, values: [String: String], _ v: Values) throws -> ExportSpec {
        var blk = BlkOptions(id: id, path: values["path"]!)
        blk.numQueues = try v.int("num-queues", 1...64) ?? 1
        blk.queueSize = UInt32(try v.int("queue-size", 64...32768) ?? 256)
        guard blk.queueSize & (blk.queueSize - 1) == 0 else {
            throw ExportSpecError(export: id, key: "queue-size", message: "must be a power of two, got \(blk.queueSize)")
        }
        blk.readonly = try v.bool("readonly") ?? false
        blk.direct = try v.bool("direct") ?? false
        blk.writeCache = try v.bool("write-cache") ?? true
        if let lbs = try v.int("logical-block-size", 512...4096) {
            guard lbs == 512 || lbs == 4096 else {
                throw ExportSpecError(export: id, key: "logical-block-size", message: "must be 512 or 4096, got \(lbs)")
            }
            blk.logicalBlockSize = UInt32(lbs)
        }
        if let v = values["inline-io"] {
            guard v == "auto" || v == "off" else {
                throw ExportSpecError(export: id, key: "inline-io", message: "expected auto or off, got '\(v)'")
            }
            blk.inlineIO = v == "auto"
        }
        if let v = values["fixed-buffers"] {
            guard v == "auto" || v == "off" else {
                throw ExportSpecError(export: id, key: "fixed-buffers", message: "expected auto or off, got '\(v)'")
            }
            blk.fixedBuffers = v == "auto"
        }
        if let e = values["engine"] {
            guard let engine = BlkOptions.Engine(rawValue: e) else {
                throw ExportSpecError(export: id, key: "engine", message: "expected io_uring or aio, got '\(e)'")
            }
            blk.engine = engine
        }
        return ExportSpec(kind: .vhostUserBlk, blk: blk, socket: values["socket"] ?? "")
    }

    private static func parseVsock(id: String, values: [String: String], _ v: Values) throws -> ExportSpec {
        guard let cidText = values["guest-cid"], let cid = UInt64(cidText), cid >= 3, cid < UInt64(UInt32.max) else {
            throw ExportSpecError(export: id, key: "guest-cid", message: "expected a CID from 3 to 4294967294, got '\(values["guest-cid"] ?? "")'")
        }
        var o = VsockOptions(id: id, guestCID: cid, udsPath: values["uds-path"]!)
        if let n = try v.int("tx-buffer-size", 4096...(64 << 20)) { o.txBufferSize = UInt32(n) }
        if let n = try v.int("stall-timeout-ms", 0...3_600_000) { o.stallTimeoutMs = UInt32(n) }
        o.queueSize = UInt32(try v.int("queue-size", 64...32768) ?? 256)
        guard o.queueSize & (o.queueSize - 1) == 0 else {
            throw ExportSpecError(export: id, key: "queue-size", message: "must be a power of two, got \(o.queueSize)")
        }
        if let g = values["groups"] {
            let groups = g.split(separator: "+", omittingEmptySubsequences: false).map(String.init)
            guard !groups.contains(where: { $0.isEmpty }) else {
                throw ExportSpecError(export: id, key: "groups", message: "expected names joined by +, got '\(g)'")
            }
            o.groups = groups
        }
        var spec = ExportSpec(kind: .vhostUserVsock, blk: BlkOptions(id: id, path: ""), socket: values["socket"] ?? "")
        spec.vsock = o
        return spec
    }

    /// The key that names an export's endpoint: `socket`, or `name` for VDUSE.
    public var endpointKey: String { kind.transport == .vduse ? "name" : "socket" }

    /// Checks across exports: ids and endpoints (socket paths, VDUSE names) are unique.
    public static func validate(_ specs: [ExportSpec]) throws {
        var ids = Set<String>(), sockets = Set<String>(), cids = Set<UInt64>()
        var groupPoller: [String: (Int, String)] = [:]
        for s in specs {
            guard ids.insert(s.id).inserted else { throw ExportSpecError(export: s.id, key: "id", message: "used by two exports") }
            guard sockets.insert(s.endpoint).inserted else {
                throw ExportSpecError(export: s.id, key: s.endpointKey, message: "\(s.endpoint) is used by two exports")
            }
            if let v = s.vsock {
                guard sockets.insert(v.udsPath).inserted else {
                    throw ExportSpecError(export: s.id, key: "uds-path", message: "\(v.udsPath) is used twice")
                }
                guard cids.insert(v.guestCID).inserted else {
                    throw ExportSpecError(export: s.id, key: "guest-cid", message: "CID \(v.guestCID) is used by two exports")
                }
                // Siblings relay on one thread: a group cannot be split across pollers.
                if let p = s.poller {
                    for g in v.groups {
                        if let (q, other) = groupPoller[g], q != p {
                            throw ExportSpecError(export: s.id, key: "poller",
                                                  message: "group '\(g)' is on poller \(q) (export '\(other)'); its members share one poller")
                        }
                        groupPoller[g] = (p, s.id)
                    }
                }
            }
        }
    }
}

struct Values {
    let export: String
    let values: [String: String]

    func int(_ key: String, _ range: ClosedRange<Int>) throws -> Int? {
        guard let s = values[key] else { return nil }
        guard let n = Int(s), range.contains(n) else {
            throw ExportSpecError(export: export, key: key,
                                  message: "expected an integer in \(range.lowerBound)...\(range.upperBound), got '\(s)'")
        }
        return n
    }

    /// A byte count: digits with an optional K, M, G or T (powers of 1024).
    func size(_ key: String) throws -> UInt64? {
        guard let s = values[key] else { return nil }
        var digits = Substring(s)
        var shift: UInt64 = 0
        if let last = s.last, let i = "KMGT".firstIndex(of: Character(last.uppercased())) {
            shift = UInt64("KMGT".distance(from: "KMGT".startIndex, to: i) + 1) * 10
            digits = s.dropLast()
        }
        guard let n = UInt64(digits), n > 0, n <= UInt64.max >> shift else {
            throw ExportSpecError(export: export, key: key, message: "expected a size like 65536, 512M or 64G, got '\(s)'")
        }
        return n << shift
    }

    func bool(_ key: String) throws -> Bool? {
        guard let s = values[key] else { return nil }
        switch s.lowercased() {
        case "on", "true", "yes", "1": return true
        case "off", "false", "no", "0": return false
        default: throw ExportSpecError(export: export, key: key, message: "expected on or off, got '\(s)'")
        }
    }
}

/// A bad export option: names the export (when its id is known) and the key.
public struct ExportSpecError: Error, CustomStringConvertible, Equatable {
    public let export: String?
    public let key: String?
    public let message: String

    public init(export: String?, key: String?, message: String) {
        self.export = export
        self.key = key
        self.message = message
    }

    public var description: String {
        var s = "export"
        if let export { s += " '\(export)'" }
        if let key { s += ", key '\(key)'" }
        return s + ": " + message
    }
}
