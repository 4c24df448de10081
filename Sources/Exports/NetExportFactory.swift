import Logging
import Net
import Virtio

/// Builds a net export: a NetDevice plugged into its switch, unplugged when the export stops, behind either
/// transport. Through VDUSE the host gets a network interface on the VMs' switch: one queue pair and no control
/// queue (VDUSE refuses one), and the MAC, when given, is the device's (VIRTIO_NET_F_MAC), as is an MTU other
/// than 1500 (VIRTIO_NET_F_MTU).
enum NetExportFactory {
    static func make(_ spec: ExportSpec, pollers: PollerGroup, logger: Logger) throws -> Export {
        let o = spec.net!
        guard let sw = SwitchRegistry.shared.existing(o.switchName) else {
            throw ExportError.device(spec.id, "no switch '\(o.switchName)'")
        }
        let device = NetDevice(options: o, switch: sw)
        do {
            switch spec.transport {
            case .vhostUser(let socket, let access):
                let export = try VhostUserExport(id: spec.id, device: device, socketPath: socket, access: access,
                                                 pollers: pollers, preferredPoller: spec.poller, logger: logger)
                export.onStop.append(wire(device, log: export.logger))
                return export
            case .vduse(let name):
                let export = try VduseExport(id: spec.id, name: name, device: device, refusedFeatures: NetFeature.mq,
                                             extraFeatures: (o.mac != nil ? NetFeature.mac : 0) | (o.mtu != 1500 ? NetFeature.mtu : 0),
                                             configSize: vduseConfigSize, pollers: pollers, preferredPoller: spec.poller,
                                             logger: logger)
                export.onStop.append(wire(device, log: export.logger))
                return export
            }
        } catch let e as VduseError {
            device.detachFromSwitch()
            throw ExportError.device(spec.id, e.description)
        } catch {
            device.detachFromSwitch()
            throw error
        }
    }

    /// The device logs through its export; returns what the export runs at stop: unplug, then the port's totals.
    private static func wire(_ device: NetDevice, log: Logger) -> () -> Void {
        device.log = { log.info("\($0)") }
        return {
            device.detachFromSwitch()
            let c = device.port.counters
            let fields = PortCounters.Counter.allCases.filter { c.get($0) != 0 }.map { "\($0)=\(c.get($0))" }
            log.info("switch port totals: \(fields.isEmpty ? "none" : fields.joined(separator: " "))")
        }
    }

    /// struct virtio_net_config up to mtu: mac, status, max_virtqueue_pairs, mtu.
    static let vduseConfigSize = 12
}
