/// The switch's learned addresses: (VLAN, MAC) -> port, in a fixed open-addressing table (linear probing,
/// twice the entry cap in slots) with a multiplicative hash, so a lookup on the forwarding path neither
/// allocates nor runs a general-purpose hasher. Removal rebuilds the table (control path and ageing only).
struct MACTable {
    struct Entry {
        /// VLAN << 48 | MAC, plus one so that 0 marks an empty slot.
        var key: UInt64 = 0
        var port: Int = 0
        var lastSeen: UInt64 = 0
        var pinned = false
    }

    let capacity: Int
    private var slots: [Entry]
    private(set) var count = 0
    private let mask: Int

    init(maxEntries: Int) {
        var c = 16
        while c < 2 * maxEntries { c <<= 1 }
        capacity = maxEntries
        slots = Array(repeating: Entry(), count: c)
        mask = c - 1
    }

    @inline(__always)
    private func slot(_ k: UInt64) -> Int { Int(truncatingIfNeeded: (k &* 0x9E37_79B9_7F4A_7C15) >> 40) & mask }

    @inline(__always)
    func find(_ key: UInt64) -> Entry? {
        let k = key &+ 1
        var i = slot(k)
        while true {
            let e = slots[i]
            if e.key == k { return e }
            if e.key == 0 { return nil }
            i = (i + 1) & mask
        }
    }

    /// Inserts or replaces; false if the table is full and the key is new.
    @inline(__always)
    @discardableResult
    mutating func set(_ key: UInt64, port: Int, lastSeen: UInt64, pinned: Bool) -> Bool {
        let k = key &+ 1
        var i = slot(k)
        while true {
            let e = slots[i]
            if e.key == k || e.key == 0 {
                if e.key == 0 {
                    guard count < capacity else { return false }
                    count += 1
                }
                slots[i] = Entry(key: k, port: port, lastSeen: lastSeen, pinned: pinned)
                return true
            }
            i = (i + 1) & mask
        }
    }

    /// Keeps only the entries `keep` accepts (rebuilds the probe sequences).
    mutating func filter(_ keep: (Entry) -> Bool) {
        let old = slots.filter { $0.key != 0 && keep($0) }
        for i in slots.indices { slots[i] = Entry() }
        count = 0
        for e in old { set(e.key &- 1, port: e.port, lastSeen: e.lastSeen, pinned: e.pinned) }
    }
}
