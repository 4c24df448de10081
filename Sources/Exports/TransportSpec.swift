/// The transport half of an export: how the device reaches its driver. The device half (blk, vsock, net
/// options) says nothing of it.
public enum TransportSpec: Equatable {
    /// A vhost-user socket vdevd listens on, and who may connect to it.
    case vhostUser(socket: String, access: SocketAccess)
    /// A VDUSE device, /dev/vduse/NAME, that `vdpa dev add name NAME mgmtdev vduse` attaches to the host kernel.
    case vduse(name: String)

    public enum Kind: String {
        case vhostUser = "vhost-user"
        case vduse
    }

    public var kind: Kind {
        switch self {
        case .vhostUser: return .vhostUser
        case .vduse: return .vduse
        }
    }

    /// Where the export is reached: the socket path, or the VDUSE device file. Unique among exports.
    public var endpoint: String {
        switch self {
        case .vhostUser(let socket, _): return socket
        case .vduse(let name): return "/dev/vduse/\(name)"
        }
    }

    /// The keys of each transport, after the device's keys of an export type.
    static func keys(_ kind: Kind) -> [ExportSpec.Key] {
        switch kind {
        case .vhostUser:
            return [ExportSpec.Key(name: "socket", help: "vhost-user socket to create", required: true)] + ExportSpec.socketKeys
                + ExportSpec.limitKeys
        case .vduse:
            return [ExportSpec.Key(name: "name", help: "VDUSE device name: /dev/vduse/NAME, vdpa dev add name NAME",
                                   required: true)]
        }
    }

    /// VDUSE device names: what /dev/vduse/NAME and the vdpa tool accept (the kernel's limit is 255 bytes).
    static func validVduseName(_ n: String) -> Bool {
        !n.isEmpty && n.utf8.count < 64 && n != "control" && n.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }
            && n.first != "."
    }
}
