#if canImport(Glibc)
import Glibc
#endif

/// Maps `length` bytes at `offset` of a frontend's shared-memory fd (dirty log, in-flight region), read-write and
/// shared, through GuestMapping (the fd must really hold them and must not be able to vanish). Returns the mapping
/// (keep it alive) and the address of `offset`. `what` names the mapping in errors.
func mapFrontendFile(fd: Int32, length: UInt64, offset: UInt64, what: String) throws -> (GuestMapping, UnsafeMutableRawPointer) {
    guard length > 0, length <= 1 << 30, offset <= 1 << 40, offset % UInt64(getpagesize()) == 0 else {
        throw SystemError("\(what) of \(length) bytes at \(offset)", errno: EINVAL)
    }
    let m = try GuestMapping(fd: fd, length: offset + length, what: what)
    return (m, m.base + Int(offset))
}
