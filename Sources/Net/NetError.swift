/// Rules a guest broke on a net queue: the queue stops (its port's other queues and other ports go on).
public enum NetError: Error, CustomStringConvertible, Equatable {
    /// A head was made available again while the frame it heads was still in the switch.
    case headInFlight(UInt16)
    /// An rx chain with device-readable buffers (virtio 1.3, 5.1.6.3: receive buffers are device-writable).
    case rxChainReadable
    /// A port already has as many rx queues as the switch keeps for one (more than any device offers).
    case tooManyQueues(String)

    public var description: String {
        switch self {
        case .headInFlight(let h): return "tx head \(h) made available again before the device used it"
        case .rxChainReadable: return "an rx buffer chain has device-readable descriptors"
        case .tooManyQueues(let port): return "port \(port) has \(SwitchPort.maxEndpoints) rx queues already"
        }
    }
}
