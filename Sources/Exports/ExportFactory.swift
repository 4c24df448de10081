import Blk
import Logging
import Virtio

/// Builds exports from validated specs.
public enum ExportFactory {
    public static func make(_ spec: ExportSpec, pollers: PollerGroup, logger: Logger) throws -> Export {
        switch spec.kind {
        case .vhostUserBlk:
            let device: BlkDevice
            do { device = try BlkDevice(options: spec.blk) } catch {
                throw ExportError.device(spec.id, "\(error)")
            }
            if device.servesInline {
                var l = logger
                l[metadataKey: "export"] = "\(spec.id)"
                l.info("\(spec.blk.path) is on a memory file system: requests are served inline on the poller")
            }
            return try VhostUserExport(id: spec.id, device: device, socketPath: spec.socket, socketMode: spec.socketMode,
                                       pollers: pollers, preferredPoller: spec.poller, logger: logger)
        }
    }
}
