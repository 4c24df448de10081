#if canImport(Glibc)
import Glibc
#endif

/// Maps `length` bytes at `offset` of a frontend's shared-memory fd (dirty log, in-flight region), read-write and
/// shared. The fd must be a regular file that really holds them: mapping past its end would fault the daemon on
/// first touch. `what` names the mapping in errors.
func mapFrontendFile(fd: Int32, length: UInt64, offset: UInt64, what: String) throws -> UnsafeMutableRawPointer {
    guard length > 0, length <= 1 << 30, offset <= 1 << 40, offset % UInt64(getpagesize()) == 0 else {
        throw SystemError("\(what) of \(length) bytes at \(offset)", errno: EINVAL)
    }
    var st = stat()
    guard fstat(fd, &st) == 0 else { throw SystemError("fstat(\(what) fd)", errno: errno) }
    guard st.st_mode & S_IFMT == S_IFREG, UInt64(st.st_size) >= offset + length else {
        throw SystemError("\(what) fd holds \(st.st_size) bytes, not \(offset + length)", errno: EINVAL)
    }
    let p = mmap(nil, Int(length), PROT_READ | PROT_WRITE, MAP_SHARED, fd, off_t(offset))
    guard let p, p != MAP_FAILED else { throw SystemError("mmap(\(what))", errno: errno) }
    return p
}
