#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Virtio

/// /dev/vduse/NAME opened: the real kernel side of a VDUSE device.
public final class VduseDeviceFile: VduseDeviceKernel {
    public let name: String
    public let file: OwnedFD
    public var requestFD: Int32 { file.fd }

    /// Opens the device file that VDUSE_CREATE_DEV made.
    public init(name: String) throws {
        let fd = open("/dev/vduse/\(name)", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw SystemError("open(/dev/vduse/\(name))", errno: errno) }
        self.name = name
        file = OwnedFD(adopting: fd)
    }

    public func readRequest() throws -> VduseRequest {
        var r = vdv_vduse_request()
        while true {
            let rc = vdv_vduse_read_request(file.fd, &r)
            if rc == -EINTR { continue }
            _ = try checkNegErrno("read(/dev/vduse/\(name))", rc)
            break
        }
        return VduseRequest(kind: .init(rawValue: r.type), id: r.request_id, queue: r.vq_index, status: r.status,
                            iovaStart: r.iova_start, iovaLast: r.iova_last)
    }

    public func respond(_ r: VduseResponse) throws {
        _ = try checkNegErrno("write(/dev/vduse/\(name))",
                              vdv_vduse_write_response(file.fd, r.id, r.ok ? 1 : 0, r.queue, r.availIndex))
    }

    public func driverFeatures() throws -> UInt64 {
        var f: UInt64 = 0
        _ = try checkNegErrno("VDUSE_DEV_GET_FEATURES", vdv_vduse_get_features(file.fd, &f))
        return f
    }

    public func queueInfo(_ index: Int) throws -> VduseQueueInfo {
        var i = vdv_vduse_vq_info()
        _ = try checkNegErrno("VDUSE_VQ_GET_INFO(\(index))", vdv_vduse_vq_get_info(file.fd, UInt32(index), &i))
        return VduseQueueInfo(num: i.num, descriptorTable: i.desc_addr, driverArea: i.driver_addr,
                              deviceArea: i.device_addr, availIndex: i.avail_index, ready: i.ready != 0)
    }

    public func setKick(_ index: Int, _ kick: EventFD?) throws {
        _ = try checkNegErrno("VDUSE_VQ_SETUP_KICKFD(\(index))",
                              vdv_vduse_vq_setup_kickfd(file.fd, UInt32(index), kick?.fd ?? -1))
    }

    public func interrupt(_ index: Int) -> InterruptNotifier {
        .injectIRQ(VduseInterruptLine(device: file, queue: UInt32(index)))
    }

    public func iotlbEntry(start: UInt64, last: UInt64) throws -> (VduseIOTLBEntry, OwnedFD)? {
        var e = vdv_vduse_iotlb_entry()
        e.start = start
        e.last = last
        let fd = vdv_vduse_iotlb_get_fd(file.fd, &e)
        // The kernel answers EINVAL when no mapping overlaps the range.
        if fd == -EINVAL { return nil }
        _ = try checkNegErrno("VDUSE_IOTLB_GET_FD", fd)
        return (VduseIOTLBEntry(start: e.start, last: e.last, offset: e.offset, writable: e.perm & 2 != 0), OwnedFD(adopting: fd))
    }
}
