#if canImport(Glibc)
import Glibc
#endif

/// An fd with one owner: closed exactly once, when the last holder lets go (a VDUSE device fd is held by its
/// transport and by every queue's interrupt line).
public final class OwnedFD {
    /// -1 once closed.
    public private(set) var fd: Int32

    /// Takes ownership of `fd`.
    public init(adopting fd: Int32) { self.fd = fd }

    /// Closes now, before the last holder lets go (e.g. the kernel waits for a file to close); later uses fail
    /// with EBADF. Control thread, once nothing on a poller uses it.
    public func close() {
        closeFD(fd)
        fd = -1
    }

    deinit { closeFD(fd) }
}
