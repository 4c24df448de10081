#if canImport(Glibc)
import Glibc
#endif
import Exports
import VhostUserTestSupport
import Virtio

/// The kernel side of a VDUSE device, scripted by a test: requests go in one at a time and the backend's answers
/// come back; queue info, the driver's features and IOTLB entries are what the test says; kick fds the backend
/// registers are kept so the test can kick; interrupts are eventfds the test can read. The "IOVA space" is a
/// GuestRAM memfd, handed out per IOTLB entry as the kernel hands out its domain file.
final class FakeVduseKernel: VduseDeviceKernel {
    let ram: GuestRAM
    private let lock = Lock()
    private let pipeRead: Int32
    private let pipeWrite: Int32
    private var pending: [VduseRequest] = []
    private var responses: [UInt32: VduseResponse] = [:]
    private var nextID: UInt32 = 1
    var features: UInt64 = 0
    var queueInfos: [VduseQueueInfo]
    /// IOTLB entries; offsets are into `ram`'s memfd.
    var entries: [VduseIOTLBEntry] = []
    private(set) var kicks: [Int: EventFD] = [:]
    let calls: [EventFD]
    /// How many VDUSE_IOTLB_GET_FD calls the backend made.
    private(set) var iotlbLookups = 0

    init(ram: GuestRAM, queues: Int) throws {
        self.ram = ram
        var p: [Int32] = [0, 0]
        guard pipe(&p) == 0 else { throw TestSupportError("pipe: \(errno)") }
        pipeRead = p[0]
        pipeWrite = p[1]
        queueInfos = Array(repeating: VduseQueueInfo(num: 0, descriptorTable: 0, driverArea: 0, deviceArea: 0,
                                                     availIndex: 0, ready: false), count: queues)
        calls = try (0..<queues).map { _ in try EventFD() }
    }

    deinit {
        close(pipeRead)
        close(pipeWrite)
    }

    // MARK: what the test does

    /// Sends a request as the kernel would and waits for the backend's answer (nil if none comes in 10 s).
    func send(_ kind: VduseRequest.Kind, queue: UInt32 = 0, status: UInt8 = 0, start: UInt64 = 0, last: UInt64 = 0) -> VduseResponse? {
        let id: UInt32 = lock.withLock {
            let id = nextID
            nextID += 1
            pending.append(VduseRequest(kind: kind, id: id, queue: queue, status: status, iovaStart: start, iovaLast: last))
            return id
        }
        var b: UInt8 = 1
        _ = write(pipeWrite, &b, 1)
        for _ in 0..<100_000 {
            if let r = lock.withLock({ responses.removeValue(forKey: id) }) { return r }
            usleep(100)
        }
        return nil
    }

    func setStatus(_ s: UInt8) -> VduseResponse? { send(.setStatus, status: s) }

    func kick(_ q: Int) { lock.withLock { kicks[q] }?.signal() }

    // MARK: VduseDeviceKernel

    var requestFD: Int32 { pipeRead }

    func readRequest() throws -> VduseRequest {
        var b: UInt8 = 0
        guard read(pipeRead, &b, 1) == 1 else { throw TestSupportError("fake request pipe: \(errno)") }
        return lock.withLock { pending.removeFirst() }
    }

    func respond(_ r: VduseResponse) throws { lock.withLock { responses[r.id] = r } }

    func driverFeatures() throws -> UInt64 { features }

    func queueInfo(_ index: Int) throws -> VduseQueueInfo {
        guard index < queueInfos.count else { throw TestSupportError("queue \(index)") }
        return queueInfos[index]
    }

    func setKick(_ index: Int, _ kick: EventFD?) throws { lock.withLock { kicks[index] = kick } }

    func interrupt(_ index: Int) -> InterruptNotifier { .eventFD(calls[index]) }

    func iotlbEntry(start: UInt64, last: UInt64) throws -> (VduseIOTLBEntry, OwnedFD)? {
        try lock.withLock {
            iotlbLookups += 1
            guard let e = entries.first(where: { $0.start <= last && start <= $0.last }) else { return nil }
            let fd = dup(ram.fd)
            guard fd >= 0 else { throw TestSupportError("dup: \(errno)") }
            return (e, OwnedFD(adopting: fd))
        }
    }

    /// Changes the script under the lock the backend's lookups take.
    func script(_ body: (FakeVduseKernel) -> Void) { lock.withLock { body(self) } }

    func kickFD(_ q: Int) -> EventFD? { lock.withLock { kicks[q] } }

    /// The kernel drops a mapping: later lookups no longer find it.
    func removeEntry(start: UInt64) { lock.withLock { entries.removeAll { $0.start == start } } }
}
