#if canImport(Glibc)
import Glibc
#endif
import CVdevd

/// One region of guest RAM, mapped from an fd the frontend passed (vhost-user SET_MEM_TABLE / ADD_MEM_REG).
/// Unmapped when the last holder lets go, so a poller still using an old table keeps it alive.
public final class MemoryRegion {
    public let guestAddress: UInt64
    public let size: UInt64
    public let userAddress: UInt64
    public let mmapOffset: UInt64
    /// Host address of guestAddress.
    public let host: UnsafeMutableRawPointer
    /// Every page of the region already has memory behind it (hugetlbfs, or a preallocated memfd): registering
    /// it with io_uring (which pins every page) costs no new memory.
    public let allocated: Bool
    private let mapBase: UnsafeMutableRawPointer
    private let mapLength: Int

    /// Regions larger than this are refused: a frontend cannot make us reserve absurd address space.
    public static let maxSize: UInt64 = 1 << 40

    /// Maps `size` bytes at `mmapOffset` of fd. The fd is not kept (the mapping holds the memory).
    public init(fd: Int32, guestAddress: UInt64, size: UInt64, userAddress: UInt64, mmapOffset: UInt64) throws {
        guard size > 0, size <= MemoryRegion.maxSize,
              mmapOffset <= MemoryRegion.maxSize,
              guestAddress.addingReportingOverflow(size).overflow == false,
              userAddress.addingReportingOverflow(size).overflow == false
        else { throw SystemError("mmap(region size)", errno: EINVAL) }
        // The fd must really hold what is claimed: mapping past its end would SIGBUS the daemon on first touch.
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SystemError("fstat(region fd)", errno: Glibc.errno) }
        guard st.st_mode & S_IFMT == S_IFREG else { throw SystemError("region fd is not a memory file", errno: EINVAL) }
        guard size + mmapOffset <= UInt64(st.st_size) else {
            throw SystemError("region of \(size) bytes at offset \(mmapOffset) past the fd's \(st.st_size) bytes", errno: EINVAL)
        }
        let length = Int(size + mmapOffset)
        // Map from offset 0 so a non-page-aligned mmap_offset still works (as libvhost-user does).
        let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0)
        guard let p, p != MAP_FAILED else { throw SystemError("mmap", errno: Glibc.errno) }
        self.guestAddress = guestAddress
        self.size = size
        self.userAddress = userAddress
        self.mmapOffset = mmapOffset
        self.mapBase = p
        self.mapLength = length
        self.allocated = vdv_memory_fd_allocated(fd, UInt64(length)) == 1
        self.host = p + Int(mmapOffset)
    }

    /// Maps `size` bytes at `offset` of a file the kernel handed out for an IOVA range (VDUSE_IOTLB_GET_FD), at
    /// guest (IO virtual) address `guestAddress`. Such a file has no size to check against: the kernel gave the
    /// range. Read-only when the mapping's permission is. The fd is not kept.
    public init(iotlbFD fd: Int32, offset: UInt64, guestAddress: UInt64, size: UInt64, writable: Bool) throws {
        guard size > 0, size <= MemoryRegion.maxSize, guestAddress.addingReportingOverflow(size).overflow == false,
              offset.addingReportingOverflow(size).overflow == false
        else { throw SystemError("mmap(IOTLB range)", errno: EINVAL) }
        let page = UInt64(getpagesize())
        let start = offset & ~(page - 1)
        let length = Int(size + (offset - start))
        let p = mmap(nil, length, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, fd, off_t(start))
        guard let p, p != MAP_FAILED else { throw SystemError("mmap(IOTLB range)", errno: Glibc.errno) }
        self.guestAddress = guestAddress
        self.size = size
        self.userAddress = guestAddress
        self.mmapOffset = offset
        self.mapBase = p
        self.mapLength = length
        self.allocated = false
        self.host = p + Int(offset - start)
    }

    deinit { munmap(mapBase, mapLength) }

    @inline(__always)
    func containsGuest(_ gpa: UInt64) -> Bool { gpa >= guestAddress && gpa - guestAddress < size }

    @inline(__always)
    func containsUser(_ uva: UInt64) -> Bool { uva >= userAddress && uva - userAddress < size }
}
