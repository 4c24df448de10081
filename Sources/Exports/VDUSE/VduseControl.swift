#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Virtio

/// /dev/vduse/control: creates and destroys VDUSE devices (Documentation/userspace-api/vduse.rst).
public final class VduseControl {
    public static let path = "/dev/vduse/control"
    /// The API version this transport speaks (Debian's 6.12 kernel accepts only 0).
    public static let apiVersion: UInt64 = 0
    let file: OwnedFD

    public init() throws {
        let fd = open(Self.path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else {
            let e = errno
            if e == ENOENT {
                throw VduseError("\(Self.path) does not exist: this kernel has no VDUSE (modprobe vduse; it needs vdpa and vhost_iotlb)")
            }
            throw VduseError("cannot open \(Self.path): \(SystemError.describe(e))")
        }
        file = OwnedFD(adopting: fd)
        let rc = vdv_vduse_set_api_version(fd, Self.apiVersion)
        guard rc == 0 else { throw VduseError("VDUSE_SET_API_VERSION \(Self.apiVersion): \(SystemError.describe(-rc))") }
    }

    /// What `create` found: a new device, or one a previous vdevd left (its driver may be running on it).
    public enum Created {
        case new(VduseDeviceFile)
        case existing(VduseDeviceFile)
    }

    /// VDUSE_CREATE_DEV, then VDUSE_VQ_SETUP for each queue (all before `vdpa dev add`); opens the device file.
    /// A device of that name that no process has open (a vdevd that died or was stopped while the device stayed
    /// attached) is taken over instead: `.existing`.
    public func createOrReopen(name: String, deviceID: UInt32, features: UInt64, queueSizes: [UInt32], vqAlign: UInt32,
                               config: [UInt8]) throws -> Created {
        do {
            return .new(try create(name: name, deviceID: deviceID, features: features, queueSizes: queueSizes,
                                   vqAlign: vqAlign, config: config))
        } catch let e as VduseError where e.exists {
            do {
                return .existing(try VduseDeviceFile(name: name))
            } catch let s as SystemError where s.errno == EBUSY {
                throw VduseError("the VDUSE device '\(name)' is served by another process")
            }
        }
    }

    /// VDUSE_CREATE_DEV, then VDUSE_VQ_SETUP for each queue (all before `vdpa dev add`); opens the device file.
    public func create(name: String, deviceID: UInt32, features: UInt64, queueSizes: [UInt32], vqAlign: UInt32,
                       config: [UInt8]) throws -> VduseDeviceFile {
        let rc = config.withUnsafeBufferPointer { c in
            vdv_vduse_create_dev(file.fd, name, deviceID, 0, features, UInt32(queueSizes.count), vqAlign,
                                 c.baseAddress, UInt32(c.count))
        }
        guard rc == 0 else {
            switch -rc {
            case EEXIST: throw VduseError("a VDUSE device named '\(name)' already exists", exists: true)
            case EPERM: throw VduseError("VDUSE_CREATE_DEV '\(name)': not permitted (needs CAP_SYS_ADMIN)")
            default: throw VduseError("VDUSE_CREATE_DEV '\(name)': \(SystemError.describe(-rc))")
            }
        }
        do {
            let dev = try VduseDeviceFile(name: name)
            for (i, size) in queueSizes.enumerated() {
                let r = vdv_vduse_vq_setup(dev.file.fd, UInt32(i), UInt16(size))
                guard r == 0 else { throw VduseError("VDUSE_VQ_SETUP queue \(i) size \(size): \(SystemError.describe(-r))") }
            }
            return dev
        } catch {
            _ = destroy(name: name)
            throw error
        }
    }

    /// VDUSE_DESTROY_DEV; 0 or -errno (EBUSY while the device is still attached with vdpa, or its file is open).
    @discardableResult
    public func destroy(name: String) -> Int32 { vdv_vduse_destroy_dev(file.fd, name) }
}

public struct VduseError: Error, CustomStringConvertible {
    public let description: String
    /// VDUSE_CREATE_DEV found the name taken.
    public let exists: Bool
    public init(_ d: String, exists: Bool = false) {
        description = d
        self.exists = exists
    }
}
