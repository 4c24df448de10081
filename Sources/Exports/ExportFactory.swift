#if canImport(Glibc)
import Glibc
#endif
import Blk
import CVdevd
import Logging
import Virtio
import Vsock

/// Builds exports from validated specs.
public enum ExportFactory {
    public static func make(_ spec: ExportSpec, pollers: PollerGroup, logger: Logger) throws -> Export {
        let e = try makeExport(spec, pollers: pollers, logger: logger)
        (e as? VhostUserExport)?.memoryBudget.limit = spec.maxGuestMemory
        return e
    }

    private static func makeExport(_ spec: ExportSpec, pollers: PollerGroup, logger: Logger) throws -> Export {
        switch spec.kind {
        case .vhostUserBlk:
            let device: BlkDevice
            do { device = try BlkDevice(options: spec.blk) } catch {
                throw ExportError.device(spec.id, "\(error)")
            }
            var l = logger
            l[metadataKey: "export"] = "\(spec.id)"
            for note in device.notes { l.info("\(note)") }
            return try VhostUserExport(id: spec.id, device: device, socketPath: spec.socket, access: spec.socketAccess,
                                       pollers: pollers, preferredPoller: spec.poller, logger: logger)
        case .vhostUserVsock:
            var o = spec.vsock!
            if let owner = spec.socketOwner { o.hostSocketOwners.append(owner) }
            // The host side's socket gets the same access as the vhost-user one.
            try SocketPath.prepare(o.udsPath)
            var dev: UInt64 = 0, ino: UInt64 = 0
            let fd = vdv_unix_listen_owned_inode(o.udsPath, spec.socketMode, spec.socketOwner.map(Int64.init) ?? -1,
                                                 spec.socketGroup.map(Int64.init) ?? -1, 128, &dev, &ino)
            guard fd >= 0 else { throw ExportError.socket(o.udsPath, SystemError("bind/listen", errno: -fd).description) }
            // Removed at stop only while the path still holds this socket.
            let hostSocket = SocketInode(path: o.udsPath, device: dev, inode: ino)
            let device = VsockDevice(options: o, listenFD: fd)
            // Siblings share a poller so relaying between them stays on one thread: the registry decides it and
            // refuses a device whose groups are on different pollers.
            let poller: Int
            do {
                poller = try VsockRegistry.shared.join(device, requested: spec.poller, pick: { pollers.pick().id })
            } catch {
                hostSocket.removeIfOurs()
                throw ExportError.device(spec.id, "\(error)")
            }
            let export: VhostUserExport
            do {
                export = try VhostUserExport(id: spec.id, device: device, socketPath: spec.socket, access: spec.socketAccess,
                                             pollers: pollers, preferredPoller: poller, logger: logger)
            } catch {
                VsockRegistry.shared.remove(device)
                hostSocket.removeIfOurs()
                throw error
            }
            let log = export.logger
            device.log = { log.info("\($0)") }
            device.trace = { log.debug("\($0)") }
            export.onStop.append {
                VsockRegistry.shared.remove(device)
                hostSocket.removeIfOurs()
            }
            return export
        case .vhostUserNet, .vduseNet:
            return try NetExportFactory.make(spec, pollers: pollers, logger: logger)
        case .vduseBlk:
            guard case .vduse(let name) = spec.transport else { throw ExportError.device(spec.id, "no VDUSE name") }
            // VDUSE memory is the kernel's bounce buffer, mapped per IOTLB entry: nothing to register with io_uring.
            var options = spec.blk
            options.fixedBuffers = false
            let device: BlkDevice
            do { device = try BlkDevice(options: options) } catch {
                throw ExportError.device(spec.id, "\(error)")
            }
            var l = logger
            l[metadataKey: "export"] = "\(spec.id)"
            for note in device.notes { l.info("\(note)") }
            do {
                // VDUSE config space is read-only: the guest cannot switch the write cache.
                return try VduseExport(id: spec.id, name: name, device: device, refusedFeatures: BlkFeature.configWCE,
                                       configSize: BlkLayout.configSize, pollers: pollers, preferredPoller: spec.poller,
                                       logger: logger)
            } catch let e as VduseError {
                throw ExportError.device(spec.id, e.description)
            }
        }
    }
}
