import Logging
import Virtio

extension Array where Element == QueueStats {
    /// One line per queue with every counter: what an export logs when it stops.
    func logTotals(_ logger: Logger) {
        for (i, s) in enumerated() {
            let fields = QueueStats.Counter.allCases.map { "\($0)=\(s.get($0))" }.joined(separator: " ")
            logger.info("queue \(i) totals: \(fields)")
        }
    }
}
