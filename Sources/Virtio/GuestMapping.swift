#if canImport(Glibc)
import Glibc
#endif
import CVdevd

/// A shared mapping of a frontend's memory fd, admitted by GuestMemoryFile and registered with the SIGBUS guard
/// (CVdevd/guest_fault.c): if the file shrinks under it anyway, the first fault turns the whole mapping into zero
/// memory and `vanished` becomes true, instead of the daemon dying. Unmapped on deinit.
public final class GuestMapping {
    public let base: UnsafeMutableRawPointer
    public let length: Int
    /// What the frontend's fd was found to be; nil for a file no frontend controls (init(trustedFD:)).
    public let file: GuestMemoryFile?
    private let guardSlot: Int32

    /// Maps the first `length` bytes of fd read-write and shared. `what` names the mapping in errors.
    public init(fd: Int32, length: UInt64, what: String) throws {
        let file: GuestMemoryFile
        do { file = try GuestMemoryFile(fd: fd, mappedLength: length) } catch let e as GuestMemoryFileError {
            throw GuestMappingError(what: what, reason: e.description)
        }
        // The guard replaces whole pages of the mapping's own size (huge pages on hugetlbfs).
        let pageLength = (length + file.pageSize - 1) / file.pageSize * file.pageSize
        // hugetlbfs without MAP_NORESERVE: the huge pages are reserved now, or mmap fails with ENOMEM; with it, a
        // pool that runs dry would SIGBUS the first touch (on the control thread, too).
        let flags = MAP_SHARED | (file.hugePages ? 0 : MAP_NORESERVE)
        let p = mmap(nil, Int(pageLength), PROT_READ | PROT_WRITE, flags, fd, 0)
        guard let p, p != MAP_FAILED else {
            let e = errno
            if file.hugePages && e == ENOMEM {
                throw GuestMappingError(what: what, reason: "hugetlbfs has no huge pages left to reserve for \(pageLength) bytes (vm.nr_hugepages)")
            }
            throw SystemError("mmap(\(what))", errno: e)
        }
        let slot = vdv_guest_mapping_register(p, pageLength)
        guard slot >= 0 else {
            munmap(p, Int(pageLength))
            throw SystemError("registering \(what) with the SIGBUS guard", errno: -slot)
        }
        base = p
        self.length = Int(pageLength)
        self.file = file
        guardSlot = slot
    }

    /// Maps `length` bytes at page-aligned `offset` of a file no frontend controls: one the kernel handed out
    /// (VDUSE_IOTLB_GET_FD) or vdevd's own (VDUSE's in-flight record). There is nothing to admit, but the mapping
    /// is still registered with the SIGBUS guard.
    public init(trustedFD fd: Int32, offset: UInt64, length: Int, writable: Bool, what: String) throws {
        let p = mmap(nil, length, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, fd, off_t(offset))
        guard let p, p != MAP_FAILED else { throw SystemError("mmap(\(what))", errno: errno) }
        let slot = vdv_guest_mapping_register(p, UInt64(length))
        guard slot >= 0 else {
            munmap(p, length)
            throw SystemError("registering \(what) with the SIGBUS guard", errno: -slot)
        }
        base = p
        self.length = length
        file = nil
        guardSlot = slot
    }

    deinit {
        vdv_guest_mapping_unregister(guardSlot)
        munmap(base, length)
    }

    /// The file shrank under the mapping and a fault replaced it with zero memory: its data is gone.
    @inline(__always)
    public var vanished: Bool { vdv_guest_mapping_faulted(guardSlot) != 0 }

    /// Changes whenever any guest mapping in the process vanished: cheap to compare once a poller pass.
    @inline(__always)
    public static var faultGeneration: UInt64 { vdv_guest_fault_generation() }
}

public struct GuestMappingError: Error, CustomStringConvertible {
    public let what: String
    public let reason: String
    public var description: String { "\(what) refused: \(reason)" }
}
