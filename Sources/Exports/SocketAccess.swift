/// Who may connect to a socket vdevd creates: its permission bits, owner and group (nil: vdevd's own).
public struct SocketAccess: Equatable {
    public var mode: UInt32
    public var owner: UInt32?
    public var group: UInt32?

    public static let defaultMode: UInt32 = 0o600

    public init(mode: UInt32 = SocketAccess.defaultMode, owner: UInt32? = nil, group: UInt32? = nil) {
        self.mode = mode
        self.owner = owner
        self.group = group
    }
}
