/// The daemon's pollers; every queue of every export is owned by exactly one of them.
public final class PollerGroup {
    public let pollers: [Poller]

    public init(count: Int, cpus: [Int32] = [], pollMicroseconds: UInt64 = 0) throws {
        var ps: [Poller] = []
        for i in 0..<max(1, count) {
            ps.append(try Poller(id: i, cpu: i < cpus.count ? cpus[i] : nil, pollMicroseconds: pollMicroseconds))
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
