/// The I/O engine a blk queue submits to: its poller's io_uring, or its poller's AIO context.
/// An enum, not a protocol: the data path switches on it instead of calling through an existential.
public enum BlockIO {
    case uring(IORing)
    case aio(AIOContext)

    @inline(__always) public func hasRoom(_ n: Int) -> Bool {
        switch self {
        case .uring(let r): return r.hasRoom(n)
        case .aio(let a): return a.hasRoom(n)
        }
    }

    @inline(__always)
    public func readv(fd: Int32, iov: UnsafeRawPointer, count: Int, offset: UInt64, userData: UInt64) -> Bool {
        switch self {
        case .uring(let r): return r.readv(fd: fd, iov: iov, count: count, offset: offset, userData: userData)
        case .aio(let a): return a.readv(fd: fd, iov: iov, count: count, offset: offset, userData: userData)
        }
    }

    @inline(__always)
    public func writev(fd: Int32, iov: UnsafeRawPointer, count: Int, offset: UInt64, flags: UInt32, userData: UInt64) -> Bool {
        switch self {
        case .uring(let r): return r.writev(fd: fd, iov: iov, count: count, offset: offset, flags: flags, userData: userData)
        case .aio(let a): return a.writev(fd: fd, iov: iov, count: count, offset: offset, flags: flags, userData: userData)
        }
    }

    @inline(__always) public func fsync(fd: Int32, dataOnly: Bool, userData: UInt64) -> Bool {
        switch self {
        case .uring(let r): return r.fsync(fd: fd, dataOnly: dataOnly, userData: userData)
        case .aio(let a): return a.fsync(fd: fd, userData: userData)
        }
    }

    @inline(__always)
    public func fallocate(fd: Int32, mode: Int32, offset: UInt64, length: UInt64, userData: UInt64) -> Bool {
        switch self {
        case .uring(let r): return r.fallocate(fd: fd, mode: mode, offset: offset, length: length, userData: userData)
        case .aio(let a): return a.fallocate(fd: fd, mode: mode, offset: offset, length: length, userData: userData)
        }
    }

    @inline(__always)
    public func blockDiscard(fd: Int32, offset: UInt64, length: UInt64, userData: UInt64) -> Bool {
        switch self {
        case .uring(let r): return r.blockDiscard(fd: fd, offset: offset, length: length, userData: userData)
        case .aio(let a): return a.blockDiscard(fd: fd, offset: offset, length: length, userData: userData)
        }
    }
}
