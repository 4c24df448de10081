import Foundation
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
        let (status, out) = LoopDevice.run("/usr/sbin/losetup", args)
        guard status == 0, out.hasPrefix("/dev/loop") else {
            throw XCTSkip("cannot create a loop device here (losetup \(args.joined(separator: " ")): \(out))")
        }
        path = out
    }

    func detach() { _ = LoopDevice.run("/usr/sbin/losetup", ["-d", path]) }

    deinit { detach() }

    static func run(_ tool: String, _ args: [String]) -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = args
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        do { try p.run() } catch { return (-1, "\(error)") }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
    }
}
