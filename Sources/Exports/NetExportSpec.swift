import Blk
import Net

/// The keys of `--export vhost-user-net,...` and their parsing.
enum NetExportSpec {
    static let keys: [ExportSpec.Key] = [
        ExportSpec.Key(name: "id", help: "export name: logs, stats, switch port name", required: true),
        ExportSpec.Key(name: "switch", help: "the --switch id this NIC is plugged into", required: true),
        ExportSpec.Key(name: "mac", help: "xx:xx:xx:xx:xx:xx: the only source MAC allowed", required: false),
        ExportSpec.Key(name: "num-queues", help: "rx/tx queue pairs, 1-16 (default 1)", required: false),
        ExportSpec.Key(name: "mtu", help: "largest IP packet, 68-65535 (default 1500)", required: false),
        ExportSpec.Key(name: "vlan", help: "802.1Q access VLAN, 1-4094 (default: none)", required: false),
        ExportSpec.Key(name: "queue-size", help: "largest virtqueue, 64-32768 (default 256)", required: false),
        ExportSpec.Key(name: "poller", help: "poller index (default: least loaded, per queue)", required: false),
    ]

    static func parse(id: String, values: [String: String], _ v: Values) throws -> ExportSpec {
        var o = NetOptions(id: id, switchName: values["switch"]!)
        if let m = values["mac"] {
            guard let mac = MACAddress(m), !mac.isMulticast, mac.value != 0 else {
                throw ExportSpecError(export: id, key: "mac", message: "expected a unicast MAC like 52:54:00:12:34:56, got '\(m)'")
            }
            o.mac = mac
        }
        o.queuePairs = try v.int("num-queues", 1...NetOptions.maxQueuePairs) ?? 1
        o.mtu = try v.int("mtu", 68...65535) ?? 1500
        o.vlan = UInt16(try v.int("vlan", 1...4094) ?? 0)
        o.queueSize = UInt32(try v.int("queue-size", 64...32768) ?? 256)
        guard o.queueSize & (o.queueSize - 1) == 0 else {
            throw ExportSpecError(export: id, key: "queue-size", message: "must be a power of two, got \(o.queueSize)")
        }
        var spec = ExportSpec(kind: .vhostUserNet, blk: BlkOptions(id: id, path: ""), socket: values["socket"] ?? "")
        spec.net = o
        return spec
    }
}
