#if canImport(Glibc)
import Glibc
#endif
import CVdevd
import Virtio

/// A switch's way out to the host: a tap device as one more port. Frames read from the tap go into the switch
/// like a guest's (their virtio_net_hdr checked the same way); frames for the port are written to the tap with
/// their header, offloads passed through (the kernel completes checksums and segments). Served by its own
/// thread, which sleeps in poll() on the tap and on its endpoint's doorbell.
public final class TapUplink {
    public let tap: TapDevice
    public let port: SwitchPort
    let sw: NetSwitch
    let endpoint: RxEndpoint
    private let stopEvent: EventFD
    private var thread: pthread_t?

    /// Frames read from the tap and not yet released by every receiver (each a 64 KiB + header buffer).
    static let frameCount = 64
    static let bufferSize = NetHeader.size + 65535 + 18
    private let frames = NetFrameTable(count: TapUplink.frameCount)
    private let buffers: UnsafeMutableRawPointer
    private let batch: UnsafeMutablePointer<NetFrameRef>
    private let taken: UnsafeMutablePointer<NetFrameRef>
    private let hdr = UnsafeMutableRawPointer.allocate(byteCount: NetHeader.size, alignment: 8)
    private let iov = UnsafeMutablePointer<iovec>.allocate(capacity: NetFrame.maxSegments + 1)
    private let wake = WakeList()
    private var nextFree = 0

    public init(switch sw: NetSwitch, tapName: String) throws {
        tap = try TapDevice(name: tapName)
        self.sw = sw
        endpoint = try RxEndpoint()
        stopEvent = try EventFD()
        port = sw.addPort(name: "uplink:\(tapName)", vlan: 0, mac: nil)
        buffers = .allocate(byteCount: TapUplink.frameCount * TapUplink.bufferSize, alignment: 64)
        batch = .allocate(capacity: 32)
        taken = .allocate(capacity: 64)
        try sw.addEndpoint(endpoint, to: port)
    }

    deinit {
        buffers.deallocate()
        batch.deallocate()
        taken.deallocate()
        hdr.deallocate()
        iov.deallocate()
    }

    public func start() {
        thread = spawnThread { [self] in run() }
    }

    /// Stops the thread, leaves the switch; frames still held by receivers are waited for (they only copy).
    public func stop() {
        stopEvent.signal()
        if let t = thread { pthread_join(t, nil) }
        thread = nil
        sw.removeEndpoint(endpoint)
        sw.removePort(port)
        for i in 0..<TapUplink.frameCount { while (frames.frames + i).frameInUse { usleep(100) } }
    }

    private func run() {
        vdv_set_thread_name("vdevd-uplink")
        var fds = [pollfd(fd: tap.fd, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: endpoint.doorbell.fd, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: stopEvent.fd, events: Int16(POLLIN), revents: 0)]
        while true {
            let fromTap = readFromTap()
            let toTap = writeToTap()
            if fromTap || toTap { continue }
            if endpoint.armAndCheck() { continue }
            // Every buffer still held by a receiver: look again shortly rather than read into one.
            let timeout: Int32 = freeFrame() == nil ? 1 : -1
            let n = poll(&fds, 3, timeout)
            if n < 0 && errno != EINTR { return }
            if fds[2].revents != 0 { return }
            if fds[1].revents != 0 { endpoint.doorbell.drain() }
        }
    }

    private func freeFrame() -> NetFrameRef? {
        for k in 0..<TapUplink.frameCount {
            let i = (nextFree + k) % TapUplink.frameCount
            if !(frames.frames + i).frameInUse {
                nextFree = (i + 1) % TapUplink.frameCount
                return frames.frames + i
            }
        }
        return nil
    }

    /// Reads a batch of frames from the tap and forwards them; true if it read any.
    private func readFromTap() -> Bool {
        var n = 0
        while n < 32, let f = freeFrame() {
            let i = f - frames.frames
            let buf = buffers + i * TapUplink.bufferSize
            let r = Glibc.read(tap.fd, buf, TapUplink.bufferSize)
            if r <= 0 { break }
            guard let frame = describe(f, buf, r) else { continue }
            frame.holdBySender()
            batch[n] = frame
            n += 1
        }
        guard n > 0 else { return false }
        sw.forward(batch, count: n, from: port, now: monotonicMicros(), wake: wake)
        for i in 0..<n { batch[i].releaseFrame() }
        wake.ring()
        return true
    }

    /// Checks a frame the kernel gave (header as for a guest's tx, DATA_VALID allowed) and describes it in f.
    private func describe(_ f: NetFrameRef, _ buf: UnsafeMutableRawPointer, _ r: Int) -> NetFrameRef? {
        let length = r - NetHeader.size
        guard length >= 14 else {
            port.counters.add(.dropRunt)
            return nil
        }
        var h = NetHeader(from: buf, size: NetHeader.size)
        h.numBuffers = 0
        h.flags &= ~NetHeader.dataValid
        let gso = h.gsoType & ~NetHeader.gsoECN
        let csumOK = h.flags & NetHeader.needsCsum == 0 || Int(h.csumStart) + Int(h.csumOffset) + 2 <= length
        let gsoOK = gso == NetHeader.gsoNone
            || ((gso == NetHeader.gsoTCPv4 || gso == NetHeader.gsoTCPv6) && h.gsoSize > 0 && h.flags & NetHeader.needsCsum != 0)
        guard h.flags & ~NetHeader.needsCsum == 0, csumOK, gsoOK, h.gsoType & NetHeader.gsoECN == 0 else {
            port.counters.add(.dropBadHeader)
            return nil
        }
        let data = buf + NetHeader.size
        f.pointee.iov[0] = iovec(iov_base: data, iov_len: length)
        f.pointee.iovCount = 1
        f.pointee.length = length
        f.pointee.header = h
        f.pointee.dst = MACAddress(at: data)
        f.pointee.src = MACAddress(at: data + 6)
        f.pointee.flowHash = UInt32(truncatingIfNeeded: f.pointee.src.value ^ f.pointee.dst.value)
        port.counters.add(.txFrames)
        port.counters.add(.txBytes, UInt64(length))
        return f
    }

    /// Writes the frames waiting for the tap, header first; true if there were any.
    private func writeToTap() -> Bool {
        let n = sw.take(endpoint, into: taken, max: 64)
        for i in 0..<n {
            let f = taken[i]
            var h = f.pointee.header
            h.numBuffers = 0
            h.write(to: hdr, size: NetHeader.size)
            iov[0] = iovec(iov_base: hdr, iov_len: NetHeader.size)
            for s in 0..<f.pointee.iovCount { iov[1 + s] = f.pointee.iov[s] }
            let w = writev(tap.fd, iov, Int32(1 + f.pointee.iovCount))
            if w < 0 {
                // The kernel refused it or its queue is full (EAGAIN): the frame is dropped, nothing waits.
                port.counters.add(errno == EAGAIN ? .dropNoRxBuffers : .dropBadHeader)
            } else {
                port.counters.add(.rxFrames)
                port.counters.add(.rxBytes, UInt64(f.pointee.length))
            }
            f.releaseFrame()
        }
        return n > 0
    }
}
