import CVdevd

/// How a queue interrupts its driver (virtio 1.3, 2.7.10: used buffer notification). One enum, two concrete
/// cases, so the poller's flush switches on a tag instead of calling through an existential.
public enum InterruptNotifier {
    /// vhost-user: the frontend's call eventfd.
    case eventFD(EventFD)
    /// VDUSE: VDUSE_VQ_INJECT_IRQ on the device fd for this queue.
    case injectIRQ(VduseInterruptLine)

    @inline(__always)
    public func signal() {
        switch self {
        case .eventFD(let e): e.signal()
        case .injectIRQ(let line): line.inject()
        }
    }
}

/// One queue's interrupt on a VDUSE device: an ioctl on the device fd, which it keeps open.
public final class VduseInterruptLine {
    public let device: OwnedFD
    public let queue: UInt32
    /// Failed injections (the device is going away); poller thread only.
    public private(set) var failures = 0

    public init(device: OwnedFD, queue: UInt32) {
        self.device = device
        self.queue = queue
    }

    @inline(__always)
    func inject() {
        if vdv_vduse_vq_inject_irq(device.fd, queue) < 0 { failures &+= 1 }
    }
}
