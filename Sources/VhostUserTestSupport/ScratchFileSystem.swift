#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// An ext4 file system on a loop device, mounted for one test: a real disk whose writes can be made to hang
/// (fsfreeze blocks them in the kernel until a thaw). Throws `Unavailable` where it cannot be made here.
public final class ScratchFileSystem {
    public let mountPoint: String
    private var mounted = true
    private var frozen = false

    /// Makes the image and the mount point inside `dir`.
    public init(in dir: String, size: Int = 64 << 20) throws {
        let img = "\(dir)/fs.img"
        mountPoint = "\(dir)/mnt"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        guard FileManager.default.createFile(atPath: img, contents: nil), truncate(img, off_t(size)) == 0 else {
            throw TestSupportError("cannot create \(img)")
        }
        let (mk, mkOut) = runTool("/sbin/mkfs.ext4", ["-q", "-F", img])
        guard mk == 0 else { throw Unavailable("mkfs.ext4 failed: \(mkOut)") }
        let (m, mOut) = runTool("/bin/mount", ["-o", "loop", img, mountPoint])
        guard m == 0 else { throw Unavailable("cannot mount a loop file system here: \(mOut)") }
    }

    /// From now on writes block in the kernel (reads still work).
    public func freeze() throws {
        let (fz, out) = runTool("/sbin/fsfreeze", ["-f", mountPoint])
        guard fz == 0 else { throw Unavailable("fsfreeze failed: \(out)") }
        frozen = true
    }

    /// Blocked writes go on. Before anything that waits for them (a daemon's exit, an export's stop).
    public func thaw() {
        guard frozen else { return }
        _ = runTool("/sbin/fsfreeze", ["-u", mountPoint])
        frozen = false
    }

    public func unmount() {
        thaw()
        guard mounted else { return }
        _ = runTool("/bin/umount", [mountPoint])
        mounted = false
    }

    deinit { unmount() }
}
