#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Exports
import Foundation
import VhostUserTestSupport
import Virtio
import XCTest

/// io_uring's worker threads (for I/O the kernel cannot start without blocking) run off the pollers' cores.
final class IOWorkerTests: ExportTestCase {
    /// (thread name, Cpus_allowed_list) of the io_uring workers of one thread of this process.
    func ioWorkers(of tid: Int32) -> [(String, String)] {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
        return tasks.compactMap { t in
            guard let comm = try? String(contentsOfFile: "/proc/self/task/\(t)/comm", encoding: .utf8),
                  comm.trimmingCharacters(in: .whitespacesAndNewlines) == "iou-wrk-\(tid)",
                  let status = try? String(contentsOfFile: "/proc/self/task/\(t)/status", encoding: .utf8),
                  let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed_list:") })
            else { return nil }
            return (comm.trimmingCharacters(in: .whitespacesAndNewlines),
                    line.split(separator: ":")[1].trimmingCharacters(in: .whitespaces))
        }
    }

    func testWorkersAvoidThePollersCPU() throws {
        guard vdv_cpus_online() >= 2 else { throw XCTSkip("needs two CPUs") }
        var mine = [Int32](repeating: 0, count: 64)
        let n = Int(vdv_cpus_of_process(&mine, 64))
        guard n >= 2, mine.prefix(n).contains(0), mine.prefix(n).contains(1) else {
            throw XCTSkip("this process may not run on CPUs 0 and 1")
        }
        let group = try PollerGroup(count: 1, cpus: [0], maxWorkers: 4)
        pollers = group
        XCTAssertFalse(group.workers.cpus.contains(0))
        XCTAssertTrue(group.workers.cpus.contains(1))
        // Buffered I/O on tmpfs through io_uring is handed to workers: make some.
        let img = "/dev/shm/vdevd-iowq-\(getpid()).img"
        addTeardownBlock { unlink(img) }
        let s = try serve(options: "inline-io=off", imageSize: 4 << 20, image: nil, socket: nil, imagePath: img)
        let c = try BlkTestClient(socket: s.socket)
        for i in 0..<64 {
            XCTAssertEqual(try c.write(sector: UInt64(i * 8), data: payload(4096, seed: UInt8(i))), Status.ok)
            XCTAssertEqual(try c.read(sector: UInt64(i * 8), count: 4096).1, payload(4096, seed: UInt8(i)))
        }
        XCTAssertEqual(group.pollers[0].workerPlacement, 0, "io_uring refused the worker placement")
        let workers = ioWorkers(of: group.pollers[0].threadID)
        guard !workers.isEmpty else { throw XCTSkip("io_uring made no worker thread for tmpfs I/O on this kernel") }
        let expected = group.workers.cpus.map(String.init).joined(separator: ",")
        for (name, cpus) in workers {
            XCTAssertEqual(cpus, expected, "\(name) may run on \(cpus)")
        }
    }
}
