import Foundation
import XCTest

/// An ext4 file system on a loop device, mounted for one test: a real disk whose writes can be made to hang
/// (fsfreeze blocks them in the kernel until a thaw). Tests skip, with the reason, where it cannot be made.
final class ScratchFileSystem {
    let mountPoint: String
    private var mounted = true
    private var frozen = false

    /// Makes the image and the mount point inside `dir`.
    init(in dir: String, size: Int = 64 << 20) throws {
        let img = "\(dir)/fs.img"
        mountPoint = "\(dir)/mnt"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        try createImage(at: img, size: size)
        let (mk, mkOut) = LoopDevice.run("/sbin/mkfs.ext4", ["-q", "-F", img])
        guard mk == 0 else { throw XCTSkip("mkfs.ext4 failed: \(mkOut)") }
        let (m, mOut) = LoopDevice.run("/bin/mount", ["-o", "loop", img, mountPoint])
        guard m == 0 else { throw XCTSkip("cannot mount a loop file system here: \(mOut)") }
    }

    /// From now on writes block in the kernel (reads still work).
    func freeze() throws {
        let (fz, out) = LoopDevice.run("/sbin/fsfreeze", ["-f", mountPoint])
        guard fz == 0 else { throw XCTSkip("fsfreeze failed: \(out)") }
        frozen = true
    }

    /// Blocked writes go on. Before anything that waits for them (a daemon's exit, an export's stop).
    func thaw() {
        guard frozen else { return }
        _ = LoopDevice.run("/sbin/fsfreeze", ["-u", mountPoint])
        frozen = false
    }

    func unmount() {
        thaw()
        guard mounted else { return }
        _ = LoopDevice.run("/bin/umount", [mountPoint])
        mounted = false
    }

    deinit { unmount() }
}
