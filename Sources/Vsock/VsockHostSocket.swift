#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Virtio

/// Guest connections to host port P go to `<uds-path>_P`. The guest picks P, so the file there must be what the
/// operator put there: a socket itself (not a symbolic link that could lead to another VM's vhost-user socket, nor
/// a hard link to one), owned by vdevd's user, root, or the owner configured for the export's sockets. The file is
/// opened once (O_PATH, no symlink followed), checked by its fd, and connected to through that fd's /proc name, so
/// it cannot be swapped between the check and the connect (issue 14, finding 7).
enum VsockHostSocket {
    enum Outcome {
        case connected(Int32)
        /// Nothing listens there (or connect failed): the guest gets RST, as before.
        case absent
        /// Something is there that may not be connected to; the reason is for the log.
        case refused(String)
    }

    static func connect(path: String, type: Int32, allowedOwners: [uid_t]) -> Outcome {
        let pfd = vdv_open_path_nofollow(path)
        guard pfd >= 0 else { return .absent }
        defer { closeFD(pfd) }
        var st = stat()
        guard fstat(pfd, &st) == 0 else { return .absent }
        switch st.st_mode & S_IFMT {
        case S_IFSOCK: break
        case S_IFLNK: return .refused("is a symbolic link")
        default: return .refused("is not a socket")
        }
        guard st.st_nlink == 1 else { return .refused("has \(st.st_nlink) hard links") }
        guard allowedOwners.contains(st.st_uid) else { return .refused("is owned by uid \(st.st_uid)") }
        let fd = vdv_unix_connect_nb("/proc/self/fd/\(pfd)", type)
        return fd >= 0 ? .connected(fd) : .absent
    }
}
