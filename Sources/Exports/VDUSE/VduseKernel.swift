import Virtio

/// A request the kernel reads to the backend from /dev/vduse/NAME (struct vduse_dev_request).
public struct VduseRequest: Equatable {
    /// enum vduse_req_type; unknown values stay representable so they can be answered FAILED.
    public struct Kind: RawRepresentable, Equatable, CustomStringConvertible {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let getVQState = Kind(rawValue: 0)
        public static let setStatus = Kind(rawValue: 1)
        public static let updateIOTLB = Kind(rawValue: 2)
        public var description: String {
            switch self {
            case .getVQState: return "GET_VQ_STATE"
            case .setStatus: return "SET_STATUS"
            case .updateIOTLB: return "UPDATE_IOTLB"
            default: return "request type \(rawValue)"
            }
        }
    }

    public var kind: Kind
    public var id: UInt32
    /// GET_VQ_STATE: the queue.
    public var queue: UInt32 = 0
    /// SET_STATUS: the device status byte (virtio 1.3, 2.1).
    public var status: UInt8 = 0
    /// UPDATE_IOTLB: the IOVA range [start, last] whose mappings changed.
    public var iovaStart: UInt64 = 0
    public var iovaLast: UInt64 = 0

    public init(kind: Kind, id: UInt32, queue: UInt32 = 0, status: UInt8 = 0, iovaStart: UInt64 = 0, iovaLast: UInt64 = 0) {
        self.kind = kind
        self.id = id
        self.queue = queue
        self.status = status
        self.iovaStart = iovaStart
        self.iovaLast = iovaLast
    }
}

/// The backend's answer (struct vduse_dev_response).
public struct VduseResponse: Equatable {
    public var id: UInt32
    public var ok: Bool
    /// GET_VQ_STATE: the queue and its next avail index.
    public var queue: UInt32 = 0
    public var availIndex: UInt16 = 0

    public init(id: UInt32, ok: Bool, queue: UInt32 = 0, availIndex: UInt16 = 0) {
        self.id = id
        self.ok = ok
        self.queue = queue
        self.availIndex = availIndex
    }
}

/// What VDUSE_VQ_GET_INFO says of a split queue once the driver set it up.
public struct VduseQueueInfo: Equatable {
    public var num: UInt32
    public var descriptorTable: UInt64
    public var driverArea: UInt64
    public var deviceArea: UInt64
    public var availIndex: UInt16
    public var ready: Bool

    public init(num: UInt32, descriptorTable: UInt64, driverArea: UInt64, deviceArea: UInt64, availIndex: UInt16, ready: Bool) {
        self.num = num
        self.descriptorTable = descriptorTable
        self.driverArea = driverArea
        self.deviceArea = deviceArea
        self.availIndex = availIndex
        self.ready = ready
    }
}

/// One IOTLB mapping (struct vduse_iotlb_entry): IOVAs [start, last] are `offset` onwards of the file handed out.
public struct VduseIOTLBEntry: Equatable {
    public var start: UInt64
    public var last: UInt64
    public var offset: UInt64
    public var writable: Bool

    public init(start: UInt64, last: UInt64, offset: UInt64, writable: Bool) {
        self.start = start
        self.last = last
        self.offset = offset
        self.writable = writable
    }
}

/// The kernel side of one VDUSE device as the transport uses it: the device fd's requests and ioctls. The real
/// one is `VduseDeviceFile`; tests script a fake. Control path only (the data path sees kick eventfds and
/// interrupt notifiers).
public protocol VduseDeviceKernel: AnyObject {
    /// Readable (POLLIN) while a request waits.
    var requestFD: Int32 { get }
    func readRequest() throws -> VduseRequest
    func respond(_ r: VduseResponse) throws
    /// VDUSE_DEV_GET_FEATURES: what the driver accepted.
    func driverFeatures() throws -> UInt64
    /// VDUSE_VQ_GET_INFO.
    func queueInfo(_ index: Int) throws -> VduseQueueInfo
    /// VDUSE_VQ_SETUP_KICKFD (nil: deassign).
    func setKick(_ index: Int, _ kick: EventFD?) throws
    /// How queue `index` interrupts the driver (VDUSE_VQ_INJECT_IRQ).
    func interrupt(_ index: Int) -> InterruptNotifier
    /// VDUSE_IOTLB_GET_FD: the first mapping overlapping [start, last] and a new fd of its file, or nil if none.
    func iotlbEntry(start: UInt64, last: UInt64) throws -> (VduseIOTLBEntry, OwnedFD)?
}
