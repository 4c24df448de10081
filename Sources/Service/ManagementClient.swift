#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Foundation
import Virtio

/// A client of the management socket (vdevctl, tests): one request line out, one reply line back.
public final class ManagementClient {
    private let conn: ClientConnection

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    public init(path: String) throws {
        let fd = vdv_unix_connect(path, Int32(SOCK_STREAM.rawValue))
        guard fd >= 0 else {
            throw Failure(description: "cannot connect to \(path): \(String(cString: strerror(-fd)))"
                          + (fd == -ENOENT ? " (is vdevd running with a management socket?)" : ""))
        }
        conn = ClientConnection(fd: fd, stopFD: -1)
    }

    /// Sends a request object (string values) and returns the daemon's reply; a reply with ok=false is returned, not thrown.
    public func request(_ fields: [String: String]) throws -> ManagementReply {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return try send(Array(try e.encode(fields)))
    }

    /// Sends one raw line (without its newline) and decodes the reply.
    public func send(_ line: [UInt8]) throws -> ManagementReply {
        guard conn.write(line + [10]) else { throw Failure(description: "the daemon closed the connection") }
        guard case .line(let reply)? = conn.readLine(max: 64 << 20) else {
            throw Failure(description: "no reply from the daemon")
        }
        do { return try JSONDecoder().decode(ManagementReply.self, from: Data(reply)) } catch {
            throw Failure(description: "unreadable reply: \(String(decoding: reply.prefix(200), as: UTF8.self))")
        }
    }
}
