/// Rules a driver (the guest) can break; each stops the offending queue, never the daemon.
public enum VirtqueueError: Error, Equatable, CustomStringConvertible {
    case ringAddressInvalid(String)           // a ring is outside guest memory or misaligned (2.7: alignment)
    case queueSizeInvalid(UInt32)             // not a power of two, zero or above 32768 (2.7)
    case availIndexTooFar(UInt16)             // avail idx moved more than queue size ahead (2.7.6)
    case headIndexOutOfRange(UInt16)          // avail ring entry >= queue size (2.7.6)
    case descriptorIndexOutOfRange(UInt16)    // next field >= table size (2.7.5)
    case chainTooLong                         // loop, or longer than the queue size (2.7.5.3.1)
    case descriptorOutsideMemory(UInt64, UInt32) // buffer not in guest RAM
    case lengthOverflow                       // lengths sum past 2^32 (2.7.4)
    case nestedIndirect                       // indirect descriptor inside an indirect table (2.7.5.3.1)
    case indirectWithNext                     // INDIRECT and NEXT both set (2.7.5.3.1)
    case indirectNotNegotiated                // INDIRECT used without VIRTIO_F_RING_INDIRECT_DESC
    case indirectTableInvalid(UInt32)         // length zero, not a multiple of 16 or too long
    case readableAfterWritable                // device-readable after device-writable (2.7.4.2)
    case tooManySegments                      // more host segments than the request slot holds
    case guestMemoryVanished                  // the file behind guest memory shrank under its mapping (SIGBUS guard)

    public var description: String {
        switch self {
        case .ringAddressInvalid(let w): return "ring address invalid: \(w)"
        case .queueSizeInvalid(let n): return "queue size \(n) invalid"
        case .availIndexTooFar(let n): return "avail index ran \(n) entries ahead"
        case .headIndexOutOfRange(let i): return "avail ring head \(i) out of range"
        case .descriptorIndexOutOfRange(let i): return "descriptor index \(i) out of range"
        case .chainTooLong: return "descriptor chain loops or exceeds queue size"
        case .descriptorOutsideMemory(let a, let l): return "descriptor addr=0x\(String(a, radix: 16)) len=\(l) outside guest memory"
        case .lengthOverflow: return "descriptor chain total length overflows"
        case .nestedIndirect: return "nested indirect descriptor"
        case .indirectWithNext: return "indirect descriptor with NEXT flag"
        case .indirectNotNegotiated: return "indirect descriptor without VIRTIO_F_RING_INDIRECT_DESC"
        case .indirectTableInvalid(let l): return "indirect table length \(l) invalid"
        case .readableAfterWritable: return "device-readable descriptor after a device-writable one"
        case .tooManySegments: return "chain has too many segments"
        case .guestMemoryVanished: return "guest memory vanished: the file behind it shrank under the mapping"
        }
    }
}
