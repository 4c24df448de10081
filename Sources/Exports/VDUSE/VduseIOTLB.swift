import Virtio

/// The IOVAs a VDUSE device's driver mapped, as the daemon sees them: each IOTLB entry is mapped once, when an
/// address in it is first used (VDUSE_IOTLB_GET_FD and mmap), and forgotten when UPDATE_IOTLB says it changed.
/// Memory tables made from it (`table()`) fault in what they lack through it; a poller still holding an older
/// table keeps its mappings alive until the requests using them complete.
final class VduseIOTLB {
    private let kernel: VduseDeviceKernel
    private let lock = Lock()
    private var regions: [MemoryRegion] = []
    /// Mappings made and dropped so far (for the export's log and tests).
    private(set) var mapped = 0
    private(set) var invalidated = 0
    /// Why the last lookup found nothing (logged by the control thread, not the poller).
    private(set) var lastFailure: String?
    private(set) lazy var faulter = MemoryFaulter { [weak self] iova in self?.resolve(iova) }

    init(kernel: VduseDeviceKernel) { self.kernel = kernel }

    /// The region holding `iova`, mapping its IOTLB entry if need be; nil if the driver has nothing mapped there.
    /// Any thread (pollers fault here).
    func resolve(_ iova: UInt64) -> MemoryRegion? {
        lock.withLock {
            if let r = regions.first(where: { iova >= $0.guestAddress && iova - $0.guestAddress < $0.size }) { return r }
            do {
                guard let (e, fd) = try kernel.iotlbEntry(start: iova, last: iova) else { return nil }
                guard e.start <= iova, iova <= e.last, e.last < UInt64.max else {
                    lastFailure = "IOTLB entry [0x\(String(e.start, radix: 16)), 0x\(String(e.last, radix: 16))] does not hold 0x\(String(iova, radix: 16))"
                    return nil
                }
                let r = try MemoryRegion(iotlbFD: fd.fd, offset: e.offset, guestAddress: e.start,
                                         size: e.last - e.start + 1, writable: e.writable)
                regions.append(r)
                mapped += 1
                return r
            } catch {
                lastFailure = "IOVA 0x\(String(iova, radix: 16)): \(error)"
                return nil
            }
        }
    }

    /// UPDATE_IOTLB: every mapping overlapping [start, last] is forgotten here (tables still holding it keep it
    /// until they go). Returns how many.
    @discardableResult
    func invalidate(start: UInt64, last: UInt64) -> Int {
        lock.withLock {
            let before = regions.count
            regions.removeAll { $0.guestAddress <= last && start <= $0.guestAddress + ($0.size - 1) }
            invalidated += before - regions.count
            return before - regions.count
        }
    }

    /// Device reset: forget every mapping.
    func clear() { lock.withLock { regions.removeAll() } }

    /// A memory table of what is mapped now that faults in the rest.
    func table() -> GuestMemory { GuestMemory(regions: lock.withLock { regions }, faulter: faulter) }

    var count: Int { lock.withLock { regions.count } }
}
