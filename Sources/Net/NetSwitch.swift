import Virtio

/// A learning Ethernet switch inside the daemon (802.1D-style forwarding): MAC learning with ageing, flooding of
/// broadcast, multicast and unknown unicast, per-port access VLANs. Senders on any poller forward a batch of
/// frames under one lock acquisition; receivers take their frames under the same lock and copy them outside it.
public final class NetSwitch {
    public let name: String
    let lock = Lock()
    /// Ports by index (switch lock). The array owns them; `portTable` mirrors it with unretained references for
    /// the forwarding path, so a frame costs no reference counting.
    private var ports: ContiguousArray<SwitchPort?> = []
    private var portTable = UnsafeMutablePointer<Unmanaged<SwitchPort>?>.allocate(capacity: 16)
    private var portTableCapacity = 16
    private var portSlots = 0
    private var table = MACTable(maxEntries: NetSwitch.maxEntries)
    /// A learned address is forgotten after this long without a frame from it (802.1D's default, 300 s).
    public var ageingMicros: UInt64 = 300_000_000
    /// A cap on learned addresses, so a guest sending from random MACs cannot grow the table without bound.
    public static let maxEntries = 4096

    public init(name: String) {
        self.name = name
        portTable.initialize(repeating: nil, count: portTableCapacity)
    }

    deinit { portTable.deallocate() }

    /// Switch lock held: the mirror follows `ports`.
    private func mirrorPorts() {
        if ports.count > portTableCapacity {
            portTable.deallocate()
            portTableCapacity = max(ports.count, 2 * portTableCapacity)
            portTable = .allocate(capacity: portTableCapacity)
        }
        portTable.initialize(repeating: nil, count: portTableCapacity)
        for (i, p) in ports.enumerated() { portTable[i] = p.map { Unmanaged.passUnretained($0) } }
        portSlots = ports.count
    }

    @inline(__always)
    static func key(_ mac: MACAddress, vlan: UInt16) -> UInt64 { UInt64(vlan) << 48 | mac.value }

    // MARK: ports (control path)

    public func addPort(name: String, vlan: UInt16, mac: MACAddress?) -> SwitchPort {
        let p = SwitchPort(name: name, vlan: vlan, fixedMAC: mac)
        lock.withLock {
            p.index = ports.firstIndex(where: { $0 == nil }) ?? ports.count
            if p.index == ports.count { ports.append(p) } else { ports[p.index] = p }
            mirrorPorts()
            // A port's mac=: never ages, never moves.
            if let mac { table.set(NetSwitch.key(mac, vlan: vlan), port: p.index, lastSeen: 0, pinned: true) }
        }
        return p
    }

    public func removePort(_ p: SwitchPort) {
        lock.withLock {
            guard p.index >= 0, p.index < ports.count, ports[p.index] === p else { return }
            table.filter { $0.port != p.index }
            ports[p.index] = nil
            mirrorPorts()
            p.index = -1
        }
    }

    public var portNames: [String] { lock.withLock { ports.compactMap { $0?.name } } }

    /// The port an address is known at now (tests and stats).
    public func lookup(_ mac: MACAddress, vlan: UInt16 = 0) -> String? {
        lock.withLock {
            guard let e = table.find(NetSwitch.key(mac, vlan: vlan)), e.port < ports.count else { return nil }
            return ports[e.port]?.name
        }
    }

    func addEndpoint(_ e: RxEndpoint, to p: SwitchPort) throws {
        try lock.withLock {
            guard p.addEndpoint(e) else { throw NetError.tooManyQueues(p.name) }
            e.port = p
        }
    }

    /// The endpoint's receiver stops: it gets no more frames, and the ones waiting are released (dropped).
    func removeEndpoint(_ e: RxEndpoint) {
        let scratch = UnsafeMutablePointer<NetFrameRef>.allocate(capacity: RxEndpoint.capacity)
        defer { scratch.deallocate() }
        let dropped: Int = lock.withLock {
            if let p = e.port { p.removeEndpoint(e) }
            return e.take(into: scratch, max: RxEndpoint.capacity)
        }
        for i in 0..<dropped { scratch[i].releaseFrame() }
        if dropped > 0 { e.port?.counters.add(.dropNoQueue, UInt64(dropped)) }
    }

    /// Receiver side: takes up to `max` waiting frames.
    @inline(__always)
    func take(_ e: RxEndpoint, into out: UnsafeMutablePointer<NetFrameRef>, max: Int) -> Int {
        if e.count == 0 { return 0 }
        return lock.withLock { e.take(into: out, max: max) }
    }

    // MARK: forwarding (any poller)

    /// Learns the sources and hands each frame to its destinations' backlogs (each holds a reference).
    /// Endpoints that got frames are collected in `wake` for the caller to ring after the lock is released.
    func forward(_ frames: UnsafeMutablePointer<NetFrameRef>, count: Int, from port: SwitchPort, now: UInt64,
                 wake: WakeList) {
        lock.withLock {
            guard port.index >= 0 else { return }
            for i in 0..<count {
                let f = frames[i]
                let src = f.pointee.src
                let srcKey = NetSwitch.key(src, vlan: port.vlan)
                if let e = table.find(srcKey) {
                    // A port's pinned address belongs to it: another port sending from it is posing.
                    if e.pinned && e.port != port.index {
                        port.counters.add(.dropSpoofed)
                        continue
                    }
                    if !e.pinned && (e.port != port.index || now &- e.lastSeen > 1_000_000) {
                        table.set(srcKey, port: port.index, lastSeen: now, pinned: false)
                    }
                } else {
                    learn(srcKey, port: port.index, now: now)
                }
                let dst = f.pointee.dst
                if !dst.isMulticast, let e = table.find(NetSwitch.key(dst, vlan: port.vlan)),
                   e.pinned || now &- e.lastSeen <= ageingMicros, let to = portTable[e.port] {
                    if e.port != port.index { to._withUnsafeGuaranteedRef { deliver(f, to: $0, wake: wake) } }
                    continue
                }
                port.counters.add(.flooded)
                for i in 0..<portSlots where i != port.index {
                    portTable[i]?._withUnsafeGuaranteedRef { to in
                        if to.vlan == port.vlan { deliver(f, to: to, wake: wake) }
                    }
                }
            }
        }
    }

    private func learn(_ key: UInt64, port: Int, now: UInt64) {
        if table.count >= NetSwitch.maxEntries {
            // Full: forget what has aged out; if nothing has, this address goes unlearned (its replies flood).
            let age = ageingMicros
            table.filter { $0.pinned || now &- $0.lastSeen <= age }
        }
        table.set(key, port: port, lastSeen: now, pinned: false)
    }

    @inline(__always)
    private func deliver(_ f: NetFrameRef, to: SwitchPort, wake: WakeList) {
        let n = to.endpointCount
        guard n > 0 else {
            to.counters.add(.dropNoQueue)
            return
        }
        let u = to.endpointTable[n == 1 ? 0 : Int(f.pointee.flowHash % UInt32(n))]
        let queued = u._withUnsafeGuaranteedRef { $0.enqueue(f) }
        if queued { wake.add(u) } else { to.counters.add(.dropBacklog) }
    }

    /// Sends a frame the daemon made itself (a RARP announcement) from `port`, on the control thread.
    func inject(_ f: NetFrameRef, from port: SwitchPort) {
        let wake = WakeList()
        f.holdBySender()
        let one = UnsafeMutablePointer<NetFrameRef>.allocate(capacity: 1)
        defer { one.deallocate() }
        one.initialize(to: f)
        forward(one, count: 1, from: port, now: monotonicMicros(), wake: wake)
        f.releaseFrame()
        wake.ring()
    }
}

/// Endpoints that received frames in one forwarding pass, rung after the lock is released. Kept by each sender
/// and reused. Each endpoint is retained once per pass when it joins (it may be removed from the switch and
/// freed before the ring), not once per frame.
final class WakeList {
    private var items = UnsafeMutablePointer<Unmanaged<RxEndpoint>>.allocate(capacity: 64)
    private var capacity = 64
    private var count = 0

    deinit { items.deallocate() }

    @inline(__always)
    func add(_ u: Unmanaged<RxEndpoint>) {
        for i in 0..<count where items[i].toOpaque() == u.toOpaque() { return }
        if count == capacity {
            let bigger = UnsafeMutablePointer<Unmanaged<RxEndpoint>>.allocate(capacity: 2 * capacity)
            bigger.moveInitialize(from: items, count: count)
            items.deallocate()
            items = bigger
            capacity *= 2
        }
        items[count] = u.retain()
        count += 1
    }

    func ring() {
        for i in 0..<count {
            items[i]._withUnsafeGuaranteedRef { $0.wakeIfArmed() }
            items[i].release()
        }
        count = 0
    }
}
