#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Exports

/// Accepts connections on `listenFD` until `stopFD` (an eventfd) is signalled; each accepted fd goes to `body`,
/// which owns it. The management socket's and the metrics listener's threads run this.
func acceptUntilStopped(listenFD: Int32, stopFD: Int32, log: (String) -> Void = { _ in }, _ body: (Int32) -> Void) {
    var throttle = AcceptThrottle()
    while true {
        var fds = [pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0)]
        if poll(&fds, 2, -1) < 0 { continue }
        if fds[1].revents != 0 { return }
        let c = vdv_accept(listenFD)
        if throttle.pauseIfExhausted(c, stopFD: stopFD, log: log) { continue }
        if c >= 0 { body(c) }
    }
}
