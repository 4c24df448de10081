/// Log-linear latency histogram (128 sub-buckets per power of two, under 1% error); no allocation to record.
struct Histogram {
    private(set) var counts = [UInt64](repeating: 0, count: 256 + 57 * 128)
    private(set) var total: UInt64 = 0
    private(set) var sum: UInt64 = 0

    @inline(__always)
    mutating func record(_ v: UInt64) {
        counts[Histogram.index(v)] &+= 1
        total &+= 1
        sum &+= v
    }

    @inline(__always)
    static func index(_ v: UInt64) -> Int {
        if v < 256 { return Int(v) }
        let msb = 63 - v.leadingZeroBitCount
        let shift = msb - 7
        return 256 + (shift - 1) * 128 + Int(v >> UInt64(shift)) - 128
    }

    static func value(_ i: Int) -> UInt64 {
        if i < 256 { return UInt64(i) }
        let shift = (i - 256) / 128 + 1
        let sub = UInt64((i - 256) % 128 + 128)
        return sub << UInt64(shift)
    }

    mutating func merge(_ o: Histogram) {
        for i in counts.indices { counts[i] &+= o.counts[i] }
        total &+= o.total
        sum &+= o.sum
    }

    var mean: Double { total == 0 ? 0 : Double(sum) / Double(total) }

    func percentile(_ p: Double) -> UInt64 {
        guard total > 0 else { return 0 }
        let target = UInt64((Double(total) * p / 100).rounded(.up))
        var acc: UInt64 = 0
        for (i, c) in counts.enumerated() where c > 0 {
            acc += c
            if acc >= max(target, 1) { return Histogram.value(i) }
        }
        return Histogram.value(counts.count - 1)
    }
}
