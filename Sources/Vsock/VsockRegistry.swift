import Virtio

/// Which vsock devices can reach which: exports sharing a group name see each other's CIDs.
/// All members of a group are served by one poller, so relaying between them needs no locks on the data.
public final class VsockRegistry {
    private let lock = Lock()
    private var members: [(device: VsockDevice, groups: Set<String>)] = []
    private var groupPoller: [String: Int] = [:]

    public init() {}

    public static let shared = VsockRegistry()

    /// The poller a device with these groups must use (the one its group already uses), if any.
    public func poller(forGroups groups: [String]) -> Int? {
        lock.withLock { groups.lazy.compactMap { self.groupPoller[$0] }.first }
    }

    public func add(_ d: VsockDevice, poller: Int) {
        lock.withLock {
            members.append((d, Set(d.options.groups)))
            for g in d.options.groups where groupPoller[g] == nil { groupPoller[g] = poller }
        }
    }

    public func remove(_ d: VsockDevice) {
        lock.withLock {
            members.removeAll { $0.device === d }
            // A group with no members left forgets its poller.
            for g in d.options.groups where !members.contains(where: { $0.groups.contains(g) }) { groupPoller[g] = nil }
        }
    }

    /// A device in a group shared with `from` whose guest has this CID.
    func sibling(of from: VsockDevice, cid: UInt64) -> VsockDevice? {
        let mine = Set(from.options.groups)
        guard !mine.isEmpty else { return nil }
        return lock.withLock {
            members.first { $0.device !== from && $0.device.options.guestCID == cid && !$0.groups.isDisjoint(with: mine) }?.device
        }
    }
}
