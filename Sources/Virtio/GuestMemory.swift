/// An immutable snapshot of the guest's memory table. A change makes a new snapshot that the control thread
/// hands to each poller; the old one (and its mappings) goes away when the last poller drops it.
public final class GuestMemory {
    public let regions: [MemoryRegion]
    /// Where an address outside every region is looked up before it counts as outside memory (VDUSE: IOVAs the
    /// kernel mapped after the table was made); nil: a miss is final.
    public let faulter: MemoryFaulter?

    public static let empty = GuestMemory(regions: [])

    public init(regions: [MemoryRegion], faulter: MemoryFaulter? = nil) {
        self.regions = regions.sorted { $0.guestAddress < $1.guestAddress }
        self.faulter = faulter
    }

    /// A snapshot that also holds the region the faulter finds for `gpa`, or nil if it finds none. Every region of
    /// this one stays in it, so nothing a request still points into is unmapped.
    public func faultingIn(gpa: UInt64) -> GuestMemory? {
        guard let faulter, let r = faulter.resolve(gpa), r.containsGuest(gpa) else { return nil }
        return GuestMemory(regions: regions.filter { $0 !== r } + [r], faulter: faulter)
    }

    /// Address space the table's mappings take.
    public var mappedBytes: UInt64 { regions.reduce(0) { $0 + $1.mappedBytes } }

    /// Some region's file shrank under its mapping (the SIGBUS guard caught the fault): queues on it must stop.
    public var vanished: Bool { regions.contains { $0.vanished } }

    /// Host pointer and the number of contiguous bytes available from a guest-physical address.
    @inline(__always)
    public func lookup(gpa: UInt64) -> (UnsafeMutableRawPointer, UInt64)? {
        for r in regions where r.containsGuest(gpa) {
            let off = gpa - r.guestAddress
            return (r.host + Int(off), r.size - off)
        }
        return nil
    }

    /// Host pointer for `length` bytes at a guest-physical address that lie in one region, else nil.
    @inline(__always)
    public func translate(gpa: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        guard let (p, avail) = lookup(gpa: gpa), length <= avail else { return nil }
        return p
    }

    /// The guest-physical address of host memory inside one region (dirty logging), or nil.
    public func guestAddress(ofHost p: UnsafeRawPointer, length: Int) -> UInt64? {
        let a = UInt(bitPattern: p)
        for r in regions {
            let start = UInt(bitPattern: r.host)
            guard a >= start, UInt64(a - start) < r.size, UInt64(length) <= r.size - UInt64(a - start) else { continue }
            return r.guestAddress + UInt64(a - start)
        }
        return nil
    }

    /// Host pointer for `length` bytes at a frontend virtual address (vring addresses), one region only.
    public func translate(userAddress uva: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        for r in regions where r.containsUser(uva) {
            let off = uva - r.userAddress
            guard length <= r.size - off else { return nil }
            return r.host + Int(off)
        }
        return nil
    }

    /// Visits the host pieces of [gpa, gpa+count) in order; false if any byte is outside RAM.
    private func walk(gpa: UInt64, count: Int, _ body: (UnsafeMutableRawPointer, Int, Int) -> Void) -> Bool {
        var addr = gpa
        var done = 0
        while done < count {
            guard let (p, avail) = lookup(gpa: addr) else { return false }
            let n = Int(min(UInt64(count - done), avail))
            body(p, done, n)
            done += n
            let (next, overflow) = addr.addingReportingOverflow(UInt64(n))
            if overflow && done < count { return false }
            addr = next
        }
        return true
    }

    /// Copies bytes out of guest memory, crossing region boundaries; false if any byte is outside RAM.
    public func read(gpa: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Bool {
        walk(gpa: gpa, count: buffer.count) { p, off, n in buffer.baseAddress!.advanced(by: off).copyMemory(from: p, byteCount: n) }
    }

    /// Copies bytes into guest memory, crossing region boundaries; false if any byte is outside RAM.
    public func write(gpa: UInt64, from buffer: UnsafeRawBufferPointer) -> Bool {
        walk(gpa: gpa, count: buffer.count) { p, off, n in p.copyMemory(from: buffer.baseAddress!.advanced(by: off), byteCount: n) }
    }
}
