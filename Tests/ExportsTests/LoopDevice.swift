import Foundation
import VhostUserTestSupport
import XCTest

/// A loop block device over a file, made with losetup for one test and detached after it.
/// Tests that need one skip (with the reason printed) where loop devices cannot be made.
final class LoopDevice {
    let path: String
    let backingFile: String

    /// `sectorSize` sets the device's logical block size; `direct` asks the loop driver for direct I/O.
    init(backingFile: String, size: Int, sectorSize: Int = 512, direct: Bool = false) throws {
        try createImage(at: backingFile, size: size)
        self.backingFile = backingFile
        var args = ["-f", "--show", "--sector-size", "\(sectorSize)"]
        if direct { args.append("--direct-io=on") }
        args.append(backingFile)
        let (status, out) = runTool("/usr/sbin/losetup", args)
        guard status == 0, out.hasPrefix("/dev/loop") else {
            throw XCTSkip("cannot create a loop device here (losetup \(args.joined(separator: " ")): \(out))")
        }
        path = out
    }

    func detach() { _ = runTool("/usr/sbin/losetup", ["-d", path]) }

    deinit { detach() }
}
