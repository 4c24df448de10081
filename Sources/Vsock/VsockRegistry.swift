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

    /// Why a device cannot join: its groups are served by different pollers (it would relay between their threads),
    /// or the poller asked for is not its groups' poller.
    public struct JoinError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Adds a device and decides its poller, under one lock: the poller of its groups (every group it names must
    /// already be on that one poller, or on none yet), else `requested`, else `pick()`. Every group it names is
    /// then on that poller, so exports joined through groups, directly or through a third, share one poller and
    /// relaying between them stays on one thread (issue 14, item 7).
    public func join(_ d: VsockDevice, requested: Int?, pick: () -> Int) throws -> Int {
        try lock.withLock {
            let groups = d.options.groups
            var held: [(group: String, poller: Int)] = []
            for g in groups { if let p = groupPoller[g] { held.append((g, p)) } }
            if let first = held.first, let other = held.first(where: { $0.poller != first.poller }) {
                throw JoinError(description: "its groups \(first.group) (poller \(first.poller)) and \(other.group) (poller \(other.poller)) are served by different pollers; joining them would relay between threads")
            }
            if let p = held.first?.poller, let r = requested, r != p {
                throw JoinError(description: "its group is served by poller \(p); poller=\(r) would split it")
            }
            let poller = held.first?.poller ?? requested ?? pick()
            members.append((d, Set(groups)))
            for g in groups where groupPoller[g] == nil { groupPoller[g] = poller }
            return poller
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
