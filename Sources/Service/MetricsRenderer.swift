import Exports
import Prometheus
import Virtio

/// The counters of a `StatsReport` in Prometheus' text exposition format (through swift-prometheus). Made
/// fresh for each scrape from the counters the pollers keep: nothing is counted twice, and nothing here runs
/// on the data path.
public enum MetricsRenderer {
    /// Queue counter name (QueueStats.Counter) to its metric name and help.
    static let queueMetrics: [(counter: String, name: String, help: String)] = [
        ("requests", "requests", "Requests completed by the queue"),
        ("readBytes", "read_bytes", "Bytes read for the guest"),
        ("writtenBytes", "written_bytes", "Bytes written for the guest"),
        ("flushes", "flushes", "FLUSH requests"),
        ("discards", "discards", "DISCARD and WRITE_ZEROES requests"),
        ("errors", "errors", "Requests failed, and ring rules the guest broke"),
        ("unsupported", "unsupported", "Requests of a type the device does not support"),
        ("notifications", "notifications", "Interrupts sent to the guest (call eventfd)"),
        ("kicks", "kicks", "Kicks received from the guest (kick eventfd)"),
        ("shortTransfers", "short_transfers", "Reads and writes the engine finished short and resubmitted"),
        ("bounced", "bounced", "O_DIRECT requests that went through the bounce buffer"),
        ("timedOut", "timed_out", "Requests failed after the device did not answer a queue stop"),
        ("stalls", "stalls", "Flows found making no progress (vsock)"),
    ]

    public static func render(_ report: StatsReport) -> String {
        let registry = PrometheusCollectorRegistry()
        func descriptor(_ subsystem: String, _ name: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(namespace: "vdevd", subsystem: subsystem, metricName: name, unitName: unit, helpText: help)
        }
        registry.makeGauge(descriptor: descriptor("", "exports", "", "Exports served")).set(Int64(report.exports.count))
        for m in queueMetrics {
            let d = descriptor("queue", m.name, "total", m.help)
            for e in report.exports {
                for q in e.queues {
                    let c = registry.makeCounter(descriptor: d, labels: [("export", e.id), ("queue", String(q.index))])
                    c.increment(by: Int64(clamping: q.counters[m.counter] ?? 0))
                }
            }
        }
        let connected = descriptor("export", "connected", "", "1 while a frontend (VM) is connected")
        let connections = descriptor("export", "connections", "total", "Frontends that have connected")
        for e in report.exports {
            let labels = [("export", e.id), ("type", e.type)]
            registry.makeGauge(descriptor: connected, labels: labels).set(Int64(e.connected ? 1 : 0))
            registry.makeCounter(descriptor: connections, labels: labels).increment(by: Int64(e.connections))
        }
        let busy = descriptor("poller", "busy_seconds", "total", "Time in poller passes that found work")
        let idle = descriptor("poller", "idle_seconds", "total", "Time in poller passes that found none, and asleep")
        let queues = descriptor("poller", "queues", "", "Queues the poller serves")
        for p in report.pollers {
            let labels = [("poller", String(p.id))]
            registry.makeCounter(descriptor: busy, labels: labels).increment(by: Double(p.busyMicros) / 1e6)
            registry.makeCounter(descriptor: idle, labels: labels).increment(by: Double(p.idleMicros) / 1e6)
            registry.makeGauge(descriptor: queues, labels: labels).set(Int64(p.queues))
        }
        return registry.emitToString()
    }
}
