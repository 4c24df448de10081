#if canImport(Glibc)
import Glibc
#endif
import Virtio

/// One accepted connection of a service listener (management or metrics) and the fd it owns: line and
/// block reads that the listener's stop eventfd interrupts, and writes that give up on a peer gone away.
final class ClientConnection {
    let fd: Int32
    let stopFD: Int32
    private var buffer: [UInt8] = []

    enum Line { case line([UInt8]), tooLong }

    init(fd: Int32, stopFD: Int32) {
        self.fd = fd
        self.stopFD = stopFD
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    }

    deinit { closeFD(fd) }

    /// Waits for input; false on stop or after `timeoutMs` (-1: no limit).
    private func waitReadable(timeoutMs: Int32) -> Bool {
        var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0)]
        while true {
            let n = poll(&fds, 2, timeoutMs)
            if n < 0 && errno == EINTR { continue }
            return n > 0 && fds[1].revents == 0
        }
    }

    /// More bytes into the buffer; false at EOF, error, stop or timeout.
    private func fill(timeoutMs: Int32) -> Bool {
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n > 0 {
                buffer.append(contentsOf: chunk[0..<n])
                return true
            }
            if n < 0 && (errno == EAGAIN || errno == EINTR) {
                guard waitReadable(timeoutMs: timeoutMs) else { return false }
                continue
            }
            return false
        }
    }

    /// The next line without its newline; nil at EOF or stop.
    func readLine(max: Int, timeoutMs: Int32 = -1) -> Line? {
        while true {
            if let nl = buffer.firstIndex(of: 10) {
                let line = Array(buffer[..<nl])
                buffer.removeSubrange(...nl)
                return line.count > max ? .tooLong : .line(line)
            }
            if buffer.count > max { return .tooLong }
            guard fill(timeoutMs: timeoutMs) else { return nil }
        }
    }

    /// Reads until `marker` has arrived (an HTTP request head); nil past `max` bytes, at EOF, stop or timeout.
    func readUntil(_ marker: [UInt8], max: Int, timeoutMs: Int32) -> [UInt8]? {
        while true {
            if buffer.count >= marker.count {
                for i in 0...(buffer.count - marker.count) where Array(buffer[i..<(i + marker.count)]) == marker {
                    return Array(buffer[..<(i + marker.count)])
                }
            }
            if buffer.count > max { return nil }
            guard fill(timeoutMs: timeoutMs) else { return nil }
        }
    }

    /// Writes everything; false if the peer went away or stop fired.
    @discardableResult
    func write(_ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL)) }
            if n > 0 { off += n; continue }
            if n < 0 && (errno == EAGAIN || errno == EINTR) {
                var fds = [pollfd(fd: fd, events: Int16(POLLOUT), revents: 0), pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0)]
                if poll(&fds, 2, 5000) <= 0 || fds[1].revents != 0 { return false }
                continue
            }
            return false
        }
        return true
    }
}
