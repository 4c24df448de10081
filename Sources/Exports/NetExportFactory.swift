import Logging
import Net
import Virtio

/// Builds a vhost-user-net export: a NetDevice plugged into its switch, unplugged when the export stops.
enum NetExportFactory {
    static func make(_ spec: ExportSpec, pollers: PollerGroup, logger: Logger) throws -> Export {
        let o = spec.net!
        guard let sw = SwitchRegistry.shared.existing(o.switchName) else {
            throw ExportError.device(spec.id, "no switch '\(o.switchName)'")
        }
        let device = NetDevice(options: o, switch: sw)
        let export: VhostUserExport
        do {
            export = try VhostUserExport(id: spec.id, device: device, socketPath: spec.socket, access: spec.socketAccess,
                                         pollers: pollers, preferredPoller: spec.poller, logger: logger)
        } catch {
            device.detachFromSwitch()
            throw error
        }
        let log = export.logger
        device.log = { log.info("\($0)") }
        export.onStop.append {
            device.detachFromSwitch()
            let c = device.port.counters
            let fields = PortCounters.Counter.allCases.filter { c.get($0) != 0 }.map { "\($0)=\(c.get($0))" }
            log.info("switch port totals: \(fields.isEmpty ? "none" : fields.joined(separator: " "))")
        }
        return export
    }
}
