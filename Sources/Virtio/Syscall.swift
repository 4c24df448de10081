#if canImport(Glibc)
import Glibc
#endif

/// An error from a system call, with the call's name so a log line says what failed.
public struct SystemError: Error, CustomStringConvertible, Equatable {
    public let call: String
    public let errno: Int32
    public init(_ call: String, errno: Int32) {
        self.call = call
        self.errno = errno
    }
    public var description: String { "\(call): \(String(cString: strerror(errno))) (errno \(errno))" }
    /// An errno as text: "Cannot allocate memory (errno 12)".
    public static func describe(_ errno: Int32) -> String { "\(String(cString: strerror(errno))) (errno \(errno))" }
}

/// One errno policy for every syscall: retry on EINTR, throw the rest with the call's name.
@inline(__always)
public func syscall<T: FixedWidthInteger>(_ name: String, _ body: () -> T) throws -> T {
    while true {
        let rc = body()
        if rc >= 0 { return rc }
        let e = Glibc.errno
        if e == EINTR { continue }
        throw SystemError(name, errno: e)
    }
}

/// For C shims that return -errno instead of setting errno.
@inline(__always)
public func checkNegErrno<T: FixedWidthInteger & SignedInteger>(_ name: String, _ rc: T) throws -> T {
    if rc < 0 { throw SystemError(name, errno: Int32(truncatingIfNeeded: -rc)) }
    return rc
}

/// Closes an fd, ignoring EINTR (Linux releases the fd even then).
public func closeFD(_ fd: Int32) {
    if fd >= 0 { _ = Glibc.close(fd) }
}
