#if canImport(Glibc)
import Glibc
#endif
import CVdevd

/// Why a frontend's memory fd is refused: each case is a rule the fd broke (issue 14, "memory that cannot vanish").
public enum GuestMemoryFileError: Error, Equatable, CustomStringConvertible {
    case notRegularFile
    case fileSystemNotMemory(magic: UInt64)   // FUSE, NFS, ext4...: a page fault there can block or fail forever
    case memfdNotSealable(errno: Int32)       // a memfd that can still shrink and cannot be sealed
    case tooSmall(have: Int64, need: UInt64)  // mapping past the end would fault on first touch

    public var description: String {
        switch self {
        case .notRegularFile:
            return "memory fd is not a regular file"
        case .fileSystemNotMemory(let m):
            return "memory fd lives on a file system that is not shared memory (statfs magic 0x\(String(m, radix: 16))): only memfd, tmpfs/shmem and hugetlbfs are accepted"
        case .memfdNotSealable(let e):
            return "memfd cannot be sealed against shrinking (F_SEAL_SHRINK: \(SystemError.describe(e))): create it with MFD_ALLOW_SEALING or seal it"
        case .tooSmall(let have, let need):
            return "memory fd holds \(have) bytes, the mapping needs \(need)"
        }
    }
}

/// The admission check for every fd whose memory vdevd maps from a frontend (guest RAM, dirty log, in-flight
/// region). A memfd must not be able to shrink: it is sealed with F_SEAL_SHRINK here unless it already is (QEMU's
/// memory-backend-memfd seals its own). Files on tmpfs (memory-backend-file on /dev/shm) and hugetlbfs are accepted
/// as they are (they cannot be sealed; the SIGBUS guard is what stands behind them). Anything else is refused: a
/// fault on FUSE or NFS can hang the poller for as long as the server likes.
public struct GuestMemoryFile {
    public enum Kind: Equatable { case sealedMemfd, sharedMemoryFile, hugetlbfs }
    public let kind: Kind
    /// On hugetlbfs (a hugetlbfs file, or a memfd made with MFD_HUGETLB): pages come from the huge page pool.
    public let hugePages: Bool
    /// The page size of the mapping (the huge page size on hugetlbfs).
    public let pageSize: UInt64

    public init(fd: Int32, mappedLength: UInt64) throws {
        var info = vdv_memory_fd_info()
        let rc = vdv_memory_fd_describe(fd, &info)
        guard rc == 0 else { throw SystemError("fstat(memory fd)", errno: -rc) }
        guard info.is_regular != 0 else { throw GuestMemoryFileError.notRegularFile }
        guard info.fs_kind != VDV_MEMFS_OTHER else { throw GuestMemoryFileError.fileSystemNotMemory(magic: info.fs_magic) }
        guard info.size >= 0, mappedLength <= UInt64(info.size) else {
            throw GuestMemoryFileError.tooSmall(have: info.size, need: mappedLength)
        }
        hugePages = info.fs_kind == VDV_MEMFS_HUGETLB
        pageSize = hugePages ? max(info.block_size, UInt64(getpagesize())) : UInt64(getpagesize())
        if info.is_memfd != 0 {
            if info.seals < 0 || info.seals & VDV_F_SEAL_SHRINK == 0 {
                let e = vdv_memfd_seal_shrink(fd)
                guard e == 0 else { throw GuestMemoryFileError.memfdNotSealable(errno: -e) }
            }
            kind = .sealedMemfd
        } else {
            kind = info.fs_kind == VDV_MEMFS_HUGETLB ? .hugetlbfs : .sharedMemoryFile
        }
    }
}
