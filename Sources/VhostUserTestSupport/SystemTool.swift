import Foundation

/// Runs a system tool (losetup, mkfs.ext4, mount, fsfreeze) to the end: its exit status and its output and errors.
public func runTool(_ path: String, _ args: [String]) -> (status: Int32, output: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = pipe
    do { try p.run() } catch { return (-1, "\(error)") }
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
}

/// What a test needs cannot be made on this machine (no loop devices, not root): the test skips with the reason.
public struct Unavailable: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}
