#if canImport(Glibc)
import Glibc
#endif
import CVdevd

/// Rules for the path a listening socket is created at.
enum SocketPath {
    /// A path that exists and is not a socket is refused; a socket nobody listens on (left by a dead vdevd)
    /// is replaced; a live one is refused.
    static func prepare(_ path: String) throws {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        guard st.st_mode & S_IFMT == S_IFSOCK else {
            throw ExportError.socket(path, "exists and is not a socket; refusing to replace it")
        }
        let probe = vdv_unix_probe(path)
        if probe == 1 { throw ExportError.socket(path, "another process is listening on it") }
        unlink(path)
    }
}
