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
    private let mapping: GuestMapping
    private let budget: GuestMemoryBudget?

    /// Regions larger than this are refused: a frontend cannot make us reserve absurd address space.
    public static let maxSize: UInt64 = 1 << 40

    /// Maps `size` bytes at `mmapOffset` of fd. The fd is not kept (the mapping holds the memory).
    /// `budget`: the export's account, charged with the mapping while it lives.
    public init(fd: Int32, guestAddress: UInt64, size: UInt64, userAddress: UInt64, mmapOffset: UInt64,
                budget: GuestMemoryBudget? = nil) throws {
        guard size > 0, size <= MemoryRegion.maxSize,
              mmapOffset <= MemoryRegion.maxSize,
              guestAddress.addingReportingOverflow(size).overflow == false,
              userAddress.addingReportingOverflow(size).overflow == false
        else { throw SystemError("mmap(region size)", errno: EINVAL) }
        let length = size + mmapOffset
        // Map from offset 0 so a non-page-aligned mmap_offset still works (as libvhost-user does). The mapping
        // checks the fd holds all of it (past its end the first touch would fault) and that it cannot vanish.
        let m = try GuestMapping(fd: fd, length: length, what: "guest memory region")
        self.guestAddress = guestAddress
        self.size = size
        self.userAddress = userAddress
        self.mmapOffset = mmapOffset
        self.mapping = m
        self.allocated = vdv_memory_fd_allocated(fd, length) == 1
        self.host = m.base + Int(mmapOffset)
        self.budget = budget
        budget?.charge(UInt64(m.length))
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
        let m = try GuestMapping(trustedFD: fd, offset: start, length: Int(size + (offset - start)), writable: writable,
                                 what: "IOTLB range")
        self.guestAddress = guestAddress
        self.size = size
        self.userAddress = guestAddress
        self.mmapOffset = offset
        self.mapping = m
        self.allocated = false
        self.host = m.base + Int(offset - start)
        self.budget = nil
    }

    deinit { budget?.release(UInt64(mapping.length)) }

    /// Bytes of address space the region's mapping takes (from fd offset 0, whole pages).
    public var mappedBytes: UInt64 { UInt64(mapping.length) }

    /// The file behind the region shrank and a fault replaced it with zero memory (see GuestMapping).
    @inline(__always)
    public var vanished: Bool { mapping.vanished }

    @inline(__always)
    func containsGuest(_ gpa: UInt64) -> Bool { gpa >= guestAddress && gpa - guestAddress < size }

    @inline(__always)
    func containsUser(_ uva: UInt64) -> Bool { uva >= userAddress && uva - userAddress < size }
}
