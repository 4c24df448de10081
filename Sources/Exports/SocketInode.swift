#if canImport(Glibc)
import Glibc
#endif

/// The socket file vdevd created at a path, by device and inode: at exit the path is removed only while it
/// still holds that inode (a file or another program's socket put there since is left alone; issue 14).
public struct SocketInode: Equatable {
    public let path: String
    public let device: UInt64
    public let inode: UInt64

    public init(path: String, device: UInt64, inode: UInt64) {
        self.path = path
        self.device = device
        self.inode = inode
    }

    /// The path still names our socket file.
    public var isStillOurs: Bool {
        var st = stat()
        return lstat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFSOCK
            && UInt64(st.st_dev) == device && UInt64(st.st_ino) == inode
    }

    /// Unlinks the path if it still holds our socket; returns whether it did.
    @discardableResult
    public func removeIfOurs() -> Bool {
        guard isStillOurs else { return false }
        return unlink(path) == 0
    }
}
