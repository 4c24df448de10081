import Virtio

/// The daemon's switches by name (`--switch id=NAME`); net exports attach to one.
public final class SwitchRegistry {
    private let lock = Lock()
    private var switches: [String: NetSwitch] = [:]

    public init() {}
    public static let shared = SwitchRegistry()

    /// The switch of this name, made on first use.
    public func switchNamed(_ name: String) -> NetSwitch {
        lock.withLock {
            if let s = switches[name] { return s }
            let s = NetSwitch(name: name)
            switches[name] = s
            return s
        }
    }

    public func existing(_ name: String) -> NetSwitch? { lock.withLock { switches[name] } }
}
