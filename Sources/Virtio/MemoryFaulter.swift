/// Finds the mapping for a guest address that no region of a memory table holds (VDUSE: an IOVA the kernel mapped
/// after the table was made, found with VDUSE_IOTLB_GET_FD). Called on a poller thread, only on a miss; must be
/// thread-safe and must not block for long.
public final class MemoryFaulter {
    public let resolve: (UInt64) -> MemoryRegion?

    public init(resolve: @escaping (UInt64) -> MemoryRegion?) { self.resolve = resolve }
}
