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

    /// A vduse-net export: the same switch port, reached through VDUSE, so the host gets a network interface on
    /// the VMs' switch. One queue pair and no control queue (VDUSE refuses one); the MAC, when given, is the
    /// device's (VIRTIO_NET_F_MAC), and so is an MTU other than 1500 (VIRTIO_NET_F_MTU).
    static func makeVduse(_ spec: ExportSpec, pollers: PollerGroup, logger: Logger) throws -> Export {
        let o = spec.net!
        guard case .vduse(let name) = spec.transport else { throw ExportError.device(spec.id, "no VDUSE name") }
        guard let sw = SwitchRegistry.shared.existing(o.switchName) else {
            throw ExportError.device(spec.id, "no switch '\(o.switchName)'")
        }
        let device = NetDevice(options: o, switch: sw)
        let export: VduseExport
        do {
            export = try VduseExport(id: spec.id, name: name, device: device, refusedFeatures: NetFeature.mq,
                                     extraFeatures: (o.mac != nil ? NetFeature.mac : 0) | (o.mtu != 1500 ? NetFeature.mtu : 0),
                                     configSize: NetExportFactory.vduseConfigSize, pollers: pollers,
                                     preferredPoller: spec.poller, logger: logger)
        } catch let e as VduseError {
            device.detachFromSwitch()
            throw ExportError.device(spec.id, e.description)
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

    /// struct virtio_net_config up to mtu: mac, status, max_virtqueue_pairs, mtu.
    static let vduseConfigSize = 12
}
