/// One vhost-user message: a 12-byte header (request, flags, size), a payload, and fds by SCM_RIGHTS.
public struct VhostUserMessage {
    public static let headerSize = 12
    public static let maxPayload = 4096
    public static let version: UInt32 = 0x1
    public static let flagReply: UInt32 = 1 << 2
    public static let flagNeedReply: UInt32 = 1 << 3
    public static let maxFDs = 32

    public var request: VhostUserRequest
    public var flags: UInt32
    public var payload: [UInt8]
    public var fds: [Int32]

    public init(request: VhostUserRequest, flags: UInt32 = VhostUserMessage.version, payload: [UInt8] = [], fds: [Int32] = []) {
        self.request = request
        self.flags = flags
        self.payload = payload
        self.fds = fds
    }

    public var needsReply: Bool { flags & VhostUserMessage.flagNeedReply != 0 }

    public func encoded() -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(VhostUserMessage.headerSize + payload.count)
        out.appendLE(request.rawValue)
        out.appendLE(flags)
        out.appendLE(UInt32(payload.count))
        out.append(contentsOf: payload)
        return out
    }
}

/// Little-endian reads of payload fields; a short payload is a malformed message, never a trap.
public struct PayloadReader {
    let bytes: [UInt8]
    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public func u16(_ off: Int) throws -> UInt16 { try int(off, UInt16.self) }
    public func u32(_ off: Int) throws -> UInt32 { try int(off, UInt32.self) }
    public func u64(_ off: Int) throws -> UInt64 { try int(off, UInt64.self) }

    func int<T: FixedWidthInteger>(_ off: Int, _: T.Type) throws -> T {
        let n = MemoryLayout<T>.size
        guard off >= 0, off + n <= bytes.count else { throw VhostUserError.malformed("payload too short") }
        var v: T = 0
        for i in 0..<n { v |= T(bytes[off + i]) << (8 * i) }
        return v
    }
}

extension Array where Element == UInt8 {
    mutating func appendLE<T: FixedWidthInteger>(_ v: T) {
        Swift.withUnsafeBytes(of: v.littleEndian) { append(contentsOf: $0) }
    }
}

public enum VhostUserError: Error, CustomStringConvertible {
    /// The message breaks the protocol's framing or layout: the connection is closed.
    case malformed(String)
    /// A well-formed request we refuse: answered with a failure where the frontend asked for a reply.
    case rejected(String)
    case disconnected
    /// The frontend did not finish its handshake in time (one frontend at a time: a silent one would hold the export).
    case handshakeTimedOut(milliseconds: Int)

    public var description: String {
        switch self {
        case .handshakeTimedOut(let ms): return "frontend did not start its handshake (SET_OWNER or SET_FEATURES) within \(ms) ms"
        case .malformed(let s): return "malformed message: \(s)"
        case .rejected(let s): return s
        case .disconnected: return "frontend disconnected"
        }
    }
}
