#if canImport(Glibc)
import Glibc
#endif
import CVdevd

/// Guest RAM for tests: a memfd mapped here, shareable with a backend by fd, at a chosen guest address.
/// Plays the part of QEMU's memory-backend-memfd.
public final class GuestRAM {
    public let fd: Int32
    public let size: UInt64
    public let guestAddress: UInt64
    /// The "frontend virtual address" reported to the backend (QEMU reports its own mapping address).
    public let userAddress: UInt64
    public let base: UnsafeMutableRawPointer
    private var next: UInt64 = 0

    /// What the RAM is made of: QEMU's memory-backend-memfd (sealing allowed, the default), a memfd that cannot
    /// be sealed, a hugetlb memfd, or a file created at a path (memory-backend-file, e.g. on /dev/shm).
    public enum Backing {
        case memfd, unsealableMemfd, hugetlbMemfd, file(String)
    }

    /// `preallocate`: every page gets memory now, as QEMU's `prealloc=on` does (else pages come on first touch).
    public init(size: UInt64, guestAddress: UInt64 = 0, name: String = "guest-ram", preallocate: Bool = false,
                backing: Backing = .memfd) throws {
        let fd: Int32
        switch backing {
        case .memfd: fd = vdv_memfd_create(name)
        case .unsealableMemfd: fd = vdv_memfd_create_flags(name, 0)
        case .hugetlbMemfd: fd = vdv_memfd_create_flags(name, VDV_MFD_HUGETLB | VDV_MFD_ALLOW_SEALING)
        case .file(let path):
            let f = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            fd = f < 0 ? -errno : f
        }
        guard fd >= 0 else { throw TestSupportError("creating \(backing): \(-fd)") }
        guard ftruncate(fd, off_t(size)) == 0 else { throw TestSupportError("ftruncate: \(errno)") }
        if preallocate {
            let rc = vdv_fallocate(fd, 0, 0, size)
            guard rc == 0 else { throw TestSupportError("fallocate: \(-rc)") }
        }
        // A hugetlb memfd is mapped as a frontend with reserve=off would (no huge pages reserved for it).
        let noReserve: Int32 = { if case .hugetlbMemfd = backing { return MAP_NORESERVE } else { return 0 } }()
        let p = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_SHARED | noReserve, fd, 0)
        guard let p, p != MAP_FAILED else { throw TestSupportError("mmap: \(errno)") }
        self.fd = fd
        self.size = size
        self.guestAddress = guestAddress
        self.base = p
        self.userAddress = UInt64(UInt(bitPattern: p))
    }

    deinit {
        munmap(base, Int(size))
        close(fd)
    }

    public func contains(_ gpa: UInt64, _ len: UInt64 = 1) -> Bool {
        gpa >= guestAddress && gpa - guestAddress <= size && len <= size - (gpa - guestAddress)
    }

    /// Host pointer of a guest address in this region (the test's view of guest memory).
    public func pointer(_ gpa: UInt64) -> UnsafeMutableRawPointer {
        precondition(contains(gpa), "gpa 0x\(String(gpa, radix: 16)) outside test RAM")
        return base + Int(gpa - guestAddress)
    }

    /// Bump allocator for rings and buffers; never frees (tests are short).
    public func allocate(_ length: UInt64, alignment: UInt64 = 16) -> UInt64 {
        let start = (next + alignment - 1) / alignment * alignment
        precondition(start + length <= size, "test RAM exhausted")
        next = start + length
        return guestAddress + start
    }

    public func write(_ gpa: UInt64, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { pointer(gpa).copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
    }

    public func read(_ gpa: UInt64, _ count: Int) -> [UInt8] {
        Array(UnsafeRawBufferPointer(start: pointer(gpa), count: count))
    }

    public func fill(_ gpa: UInt64, _ count: Int, byte: UInt8) {
        memset(pointer(gpa), Int32(byte), count)
    }
}

public struct TestSupportError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}
