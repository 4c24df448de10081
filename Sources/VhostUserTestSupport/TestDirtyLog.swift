#if canImport(Glibc)
import Glibc
#endif
import CVdevd

/// The dirty-page bitmap of a live migration as QEMU keeps one (a bit per 4 KiB page of guest-physical memory,
/// in a memfd), handed to the backend with SET_LOG_BASE; and the per-ring switch QEMU flips as a migration
/// starts and ends.
public final class TestDirtyLog {
    public static let logAll: UInt64 = 1 << 26       // VHOST_F_LOG_ALL
    public static let logSHMFD: UInt64 = 1 << 1      // VHOST_USER_PROTOCOL_F_LOG_SHMFD
    public let bitmap: UnsafeMutablePointer<UInt8>
    public let size: Int

    /// Maps a bitmap covering `ram` and sends it; the backend must answer (QEMU waits for that reply).
    public init(frontend: VhostUserFrontend, covering ram: GuestRAM) throws {
        let pages = (ram.guestAddress + ram.size) / 4096
        size = Int((pages + 7) / 8 + 4095) / 4096 * 4096
        let fd = vdv_memfd_create("test-log")
        defer { close(fd) }
        guard fd >= 0, ftruncate(fd, off_t(size)) == 0,
              let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw TestSupportError("dirty log bitmap: errno \(errno)")
        }
        bitmap = p.assumingMemoryBound(to: UInt8.self)
        var d: [UInt8] = []
        d.le(UInt64(size))
        d.le(UInt64(0))
        try frontend.send(VhostUserFrontend.Request.setLogBase.rawValue, payload: d, fds: [fd])
        let reply = try frontend.receive()
        guard reply.request == VhostUserFrontend.Request.setLogBase.rawValue else {
            throw TestSupportError("SET_LOG_BASE answered with request \(reply.request)")
        }
    }

    deinit { munmap(bitmap, size) }

    public func isDirty(_ gpa: UInt64) -> Bool {
        let page = gpa / 4096
        return bitmap[Int(page / 8)] & UInt8(1 << (page % 8)) != 0
    }

    public var dirtyPages: Int { (0..<size).reduce(0) { $0 + bitmap[$1].nonzeroBitCount } }

    public func clear() { memset(bitmap, 0, size) }

    /// QEMU as a migration starts or ends: LOG_ALL in `features`, then on each ring (while it runs)
    /// VHOST_VRING_F_LOG with the used ring's guest address. Answers of 0 expected (REPLY_ACK).
    public static func setLogging(_ on: Bool, frontend: VhostUserFrontend, features: UInt64,
                                  rings: [(index: UInt32, queue: DriverVirtqueue)]) throws {
        guard try frontend.command(.setFeatures, payload: frontend.u64Payload(features | (on ? logAll : 0))) == 0 else {
            throw TestSupportError("SET_FEATURES with LOG_ALL \(on ? "on" : "off") refused")
        }
        for (index, q) in rings {
            var a: [UInt8] = []
            a.le(index); a.le(UInt32(on ? 1 : 0))
            a.le(q.descUserAddress); a.le(q.usedUserAddress); a.le(q.availUserAddress); a.le(q.usedGPA)
            guard try frontend.command(.setVringAddr, payload: a) == 0 else {
                throw TestSupportError("SET_VRING_ADDR with the log flag refused on ring \(index)")
            }
        }
    }
}
