#if canImport(Glibc)
import Glibc
#endif

/// What an operator sets on a vsock export.
public struct VsockOptions: Equatable {
    public var id: String
    public var guestCID: UInt64
    /// Host side: host programs connect here and write `CONNECT <port>\n`; guest connections to host port P
    /// go to `<udsPath>_<P>`.
    public var udsPath: String
    /// Bytes vdevd holds per connection for data on its way from the guest to the host socket (our buf_alloc).
    public var txBufferSize: UInt32 = 256 * 1024
    /// Exports sharing a group reach each other by CID.
    public var groups: [String] = []
    public var queueSize: UInt32 = 256
    public var socketMode: UInt32 = 0o660
    /// A connection with data or credit pending that makes no progress for this long is logged once with
    /// its state and counted (`stalls` in the tx queue's stats); 0 turns the check off.
    public var stallTimeoutMs: UInt32 = 5000
    /// Who may own a `<udsPath>_<port>` socket a guest connects to: vdevd's user, root, and the owner set for the
    /// export's sockets (socket-owner), if any.
    public var hostSocketOwners: [uid_t] = [geteuid(), 0]

    public init(id: String, guestCID: UInt64, udsPath: String) {
        self.id = id
        self.guestCID = guestCID
        self.udsPath = udsPath
    }

    /// Caps on what a guest or a host peer can grow.
    public static let maxConnections = 4096
    public static let maxConnectLine = 64
    public static let maxPendingPackets = 4096
    public static let maxSeqpacketMessage = 1 << 20
    public static let maxRelayedPacket: UInt32 = 64 * 1024
    /// Relayed payload bytes waiting for one guest's rx buffers.
    public static let maxPendingBytes = 16 << 20
    /// Host connections that have not sent their CONNECT line yet; when they fill up, those silent for
    /// longer than `connectLineTimeout` seconds are closed to make room.
    public static var maxAwaitingConnectLine = 256
    public static var connectLineTimeout = 10.0
    /// Host connections that sent CONNECT and wait for the guest's answer (RESPONSE or RST); past the cap new ones
    /// are closed, and each is closed (and the guest sent RST) after `guestAnswerTimeout` seconds or when the host
    /// peer gives up.
    public static var maxAwaitingGuestAnswer = 256
    public static var guestAnswerTimeout = 10.0
    /// While a connection waits for the guest's credit, the guest is asked for it (CREDIT_REQUEST) again after
    /// this long, then twice as long each time, up to 16 times this.
    public static let creditRequestIntervalMicros: UInt64 = 200_000
}
