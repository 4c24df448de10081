#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Virtio

/// An owned tap fd: /dev/net/tun as IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, with a 12-byte virtio_net_hdr in front
/// of every frame each way and the offloads the switch passes through (partial checksums, TSO) turned on.
public final class TapDevice {
    public let fd: Int32
    public let name: String

    // TUN_F_* (linux/if_tun.h): the kernel may hand us partial checksums and TSO frames.
    static let tunFCsum: UInt32 = 0x01
    static let tunFTSO4: UInt32 = 0x02
    static let tunFTSO6: UInt32 = 0x04

    public init(name: String) throws {
        fd = try checkNegErrno("open tap \(name)", vdv_tap_open(name))
        self.name = name
        let r = vdv_tap_set_offload(fd, TapDevice.tunFCsum | TapDevice.tunFTSO4 | TapDevice.tunFTSO6)
        if r < 0 {
            closeFD(fd)
            throw SystemError("TUNSETOFFLOAD on \(name)", errno: -r)
        }
    }

    deinit { closeFD(fd) }
}
