#if canImport(Glibc)
import Glibc
#endif
import CVdevd

/// The frontend's dirty-page bitmap while a VM is live-migrated (vhost-user.rst, "Migration"; SET_LOG_BASE with
/// LOG_SHMFD): one bit per 4 KiB page of guest-physical address space. Every page the device writes (data of
/// reads, status bytes, the used ring) is marked with an atomic OR, since the frontend reads and clears it
/// concurrently. Shared by every ring of a device; written by their pollers.
public final class DirtyLog {
    public static let pageSize: UInt64 = 0x1000
    /// Bytes of bitmap; pages at or past size * 8 are outside the log and not marked.
    public let size: UInt64
    private let base: UnsafeMutableRawPointer
    private let mapping: GuestMapping

    /// Maps the log the frontend passed: at most 1 GiB of bitmap (32 TiB of guest memory), from an fd that really
    /// holds it (mapping past its end would fault on first touch).
    public init(fd: Int32, mmapSize: UInt64, offset: UInt64) throws {
        (mapping, base) = try mapFrontendFile(fd: fd, length: mmapSize, offset: offset, what: "dirty log")
        size = mmapSize
    }

    /// Marks every page of [gpa, gpa+length) dirty.
    @inline(__always)
    public func mark(gpa: UInt64, length: UInt64) {
        guard length > 0, gpa.addingReportingOverflow(length).overflow == false else { return }
        var page = gpa / DirtyLog.pageSize
        let last = (gpa + length - 1) / DirtyLog.pageSize
        while page <= last {
            let byte = page / 8
            guard byte < size else { return }
            vdv_atomic_or_u8(base + Int(byte), UInt8(1) << UInt8(page % 8))
            page += 1
        }
    }

    /// Marks the pages under host memory the device wrote, if it lies in guest RAM.
    @inline(__always)
    public func mark(host p: UnsafeRawPointer, length: Int, memory: GuestMemory) {
        if let gpa = memory.guestAddress(ofHost: p, length: length) { mark(gpa: gpa, length: UInt64(length)) }
    }
}
