#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Virtio

/// A listening socket and the fd it owns: a Unix socket at a path (created with its access already in place,
/// see `vdv_unix_listen_owned`) or a TCP port. Closed when dropped; the path is removed by `removeFile()`.
public final class ListeningSocket {
    public let fd: Int32
    /// The Unix socket's path; nil for TCP.
    public let path: String?
    /// The socket file created at `path`, removed only while the path still holds it.
    public let socketFile: SocketInode?

    /// Creates a Unix socket at `path` following `SocketPath`'s rules (a non-socket is refused, a stale
    /// socket replaced, a live one refused).
    public init(unixPath path: String, access: SocketAccess, backlog: Int32) throws {
        try SocketPath.prepare(path)
        var dev: UInt64 = 0, ino: UInt64 = 0
        let fd = vdv_unix_listen_owned_inode(path, access.mode, access.owner.map(Int64.init) ?? -1,
                                             access.group.map(Int64.init) ?? -1, backlog, &dev, &ino)
        guard fd >= 0 else {
            let why = fd == -EEXIST ? "a file appeared at the path while the socket was made; left alone"
                                    : SystemError("bind/listen", errno: -fd).description
            throw ExportError.socket(path, why)
        }
        self.fd = fd
        self.path = path
        socketFile = SocketInode(path: path, device: dev, inode: ino)
    }

    /// A TCP listener on an IPv4 or IPv6 literal address.
    public init(tcpHost host: String, port: UInt16, backlog: Int32) throws {
        let fd = vdv_tcp_listen(host, port, backlog)
        guard fd >= 0 else {
            throw ExportError.socket("\(host):\(port)", fd == -EINVAL ? "not an IP address"
                                                                     : SystemError("bind/listen", errno: -fd).description)
        }
        self.fd = fd
        self.path = nil
        socketFile = nil
    }

    /// The TCP port actually bound (port 0 asks the kernel for one).
    public var tcpPort: UInt16 { vdv_tcp_local_port(fd) }

    /// Removes the socket file, only if the path still holds the inode created here (a file or another
    /// program's socket put there since is not ours).
    public func removeFile() {
        socketFile?.removeIfOurs()
    }

    deinit { closeFD(fd) }
}
