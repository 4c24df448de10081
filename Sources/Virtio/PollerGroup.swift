/// The daemon's pollers; every queue of every export is owned by exactly one of them.
public final class PollerGroup {
    public let pollers: [Poller]

    /// io_uring workers of every poller: on the CPUs no poller runs on, capped.
    public let workers: IOWorkers

    public init(count: Int, cpus: [Int32] = [], pollMicroseconds: UInt64 = 0,
                maxWorkers: UInt32 = IOWorkers.defaultMaxBounded, ringEntries: UInt32 = 1024,
                stopTimeoutMicros: UInt64 = Poller.defaultStopTimeoutMicros) throws {
        let n = max(1, count)
        workers = IOWorkers(cpus: IOWorkers.sparing(pollerCPUs: Array(cpus.prefix(n))), maxBounded: maxWorkers)
        var ps: [Poller] = []
        for i in 0..<n {
            ps.append(try Poller(id: i, cpu: i < cpus.count ? cpus[i] : nil, pollMicroseconds: pollMicroseconds,
                                 ringEntries: ringEntries, workers: workers, stopTimeoutMicros: stopTimeoutMicros))
        }
        pollers = ps
        for p in pollers { p.start() }
    }

    /// The poller with the fewest queues, or the one asked for.
    public func pick(preferred: Int? = nil) -> Poller {
        if let preferred, preferred >= 0, preferred < pollers.count { return pollers[preferred] }
        return pollers.min(by: { $0.queueCount < $1.queueCount })!
    }

    public func stopAll() { for p in pollers { p.stop() } }
}
