#if canImport(Glibc)
import Glibc
#endif
import Logging
import Virtio

/// The backend's state for one connected frontend: negotiated features, the memory table and each vring.
/// Runs on the export's control thread; rings run on pollers and are touched only through them.
final class VhostUserSession {
    /// The transport-neutral state: features, memory, queues, pollers, reset.
    let session: DeviceSession
    var device: VirtioDevice { session.device }
    var logger: Logger
    let connection: VhostUserConnection

    var features: UInt64 { session.features }
    private(set) var protocolFeatures: UInt64 = 0
    private var status: UInt8 = 0
    /// Told which poller serves a queue (nil once it stops), for the export's stats; control thread.
    var onPlacement: (_ queue: Int, _ poller: Int?) -> Void {
        get { session.onPlacement }
        set { session.onPlacement = newValue }
    }
    /// The vrings, as the device session keeps them.
    private var vrings: [DeviceSession.Queue] {
        get { session.queues }
        _modify { yield &session.queues }
    }
    /// The export's account of mapped guest memory (its cap and the retired-table rule); none: unaccounted.
    var memoryBudget: GuestMemoryBudget?

    /// What this backend supports of the protocol.
    static let supportedProtocolFeatures: UInt64 =
        VhostUserProtocolFeature.mq | VhostUserProtocolFeature.replyAck | VhostUserProtocolFeature.config
        | VhostUserProtocolFeature.configureMemSlots | VhostUserProtocolFeature.resetDevice
        | VhostUserProtocolFeature.status
    /// The protocol features offered to this device's frontend: in-flight tracking only where requests can be
    /// resubmitted, dirty logging where the device logs its writes, RARP where it can announce a migrated guest (net).
    var offeredProtocolFeatures: UInt64 {
        Self.supportedProtocolFeatures | (device.resubmitsInflight ? VhostUserProtocolFeature.inflightSHMFD : 0)
            | (device.logsDirtyPages ? VhostUserProtocolFeature.logSHMFD : 0)
            | (device is MigrationAnnouncer ? VhostUserProtocolFeature.rarp : 0)
            | (device is HostMTUReceiver ? VhostUserProtocolFeature.netMTU : 0)
    }
    /// The device's features, LOG_ALL where it can be live-migrated, and vhost-user's own bit.
    var offeredFeatures: UInt64 {
        device.offeredFeatures | (device.logsDirtyPages ? VirtioFeature.logAll : 0) | vhostUserFProtocolFeatures
    }
    /// Memory slots offered with CONFIGURE_MEM_SLOTS (each is one mapping; capped so a frontend cannot grow it).
    static let maxMemSlots = 32

    init(device: VirtioDevice, pollers: PollerGroup, preferredPoller: Int?, queueStats: [QueueStats],
         connection: VhostUserConnection, logger: Logger) {
        session = DeviceSession(device: device, pollers: pollers, preferredPoller: preferredPoller,
                                queueStats: queueStats, logger: logger)
        self.connection = connection
        self.logger = logger
    }

    var protocolFeaturesNegotiated: Bool { features & vhostUserFProtocolFeatures != 0 }

    /// Serves messages until the frontend goes away or the export stops; always releases everything.
    func serve() {
        defer { teardown() }
        while true {
            let msg: VhostUserMessage
            do {
                msg = try connection.receive()
            } catch VhostUserError.disconnected {
                logger.info("frontend disconnected")
                return
            } catch {
                logger.error("closing connection: \(error)")
                return
            }
            do {
                try handle(msg)
            } catch VhostUserError.rejected(let why) {
                logger.warning("\(msg.request) refused: \(why)")
                // A request whose reply carries data cannot be answered "no": the frontend would wait forever.
                if Self.hasOwnReply(msg.request) { return }
                if msg.needsReply {
                    if (try? connection.replyU64(to: msg.request, 1)) == nil { return }
                }
            } catch {
                logger.error("closing connection after \(msg.request): \(error)")
                return
            }
        }
    }

    static func hasOwnReply(_ r: VhostUserRequest) -> Bool {
        switch r {
        case .getFeatures, .getProtocolFeatures, .getVringBase, .getQueueNum, .getConfig, .getMaxMemSlots,
             .getStatus, .getInflightFD, .setLogBase: return true
        default: return false
        }
    }

    /// fds of the message being handled that a vring took over; every other fd is closed once, by handle().
    private var adoptedFDs: [Int32] = []

    private func expectPayload(_ m: VhostUserMessage, _ size: Int) throws {
        guard m.payload.count >= size else {
            throw VhostUserError.malformed("\(m.request) payload \(m.payload.count) bytes, expected \(size)")
        }
    }

    private func vringIndex(_ m: VhostUserMessage, _ raw: UInt32) throws -> Int {
        let i = Int(raw)
        guard i < vrings.count else {
            throw VhostUserError.rejected("vring index \(i) out of range (device has \(vrings.count))")
        }
        return i
    }

    func handle(_ m: VhostUserMessage) throws {
        logger.trace("\(m.request) size=\(m.payload.count) fds=\(m.fds.count)")
        let r = PayloadReader(m.payload)
        adoptedFDs.removeAll()
        defer { for f in m.fds where !adoptedFDs.contains(f) { closeFD(f) } }
        switch m.request {
        case .getFeatures:
            try connection.replyU64(to: m.request, offeredFeatures)
        case .setFeatures:
            connection.handshakeDone()
            try expectPayload(m, 8)
            let f = try r.u64(0)
            guard f & ~offeredFeatures == 0 else {
                throw VhostUserError.rejected("features 0x\(String(f, radix: 16)) include bits not offered")
            }
            if vrings.contains(where: { $0.running != nil }) {
                // Rings latch features (EVENT_IDX, INDIRECT) when they start; only LOG_ALL may change under them
                // (a live migration starting or ending). QEMU's vhost-user-net sends the same features again for
                // each queue pair it starts.
                if f == features { break }
                guard (f ^ features) & ~VirtioFeature.logAll == 0 else {
                    throw VhostUserError.rejected("SET_FEATURES while rings are running")
                }
                session.features = f
                session.updateDirtyLogging()
                logger.info("dirty-page logging \(f & VirtioFeature.logAll != 0 ? "on" : "off")")
                break
            }
            session.features = f
            device.featuresAcked(f & ~(vhostUserFProtocolFeatures | VirtioFeature.logAll))
            logger.debug("features acked 0x\(String(f, radix: 16))")
        case .getProtocolFeatures:
            try connection.replyU64(to: m.request, offeredProtocolFeatures)
        case .setProtocolFeatures:
            try expectPayload(m, 8)
            let f = try r.u64(0)
            guard f & ~offeredProtocolFeatures == 0 else {
                throw VhostUserError.rejected("protocol features 0x\(String(f, radix: 16)) not offered")
            }
            protocolFeatures = f
        case .setOwner:
            connection.handshakeDone()
        case .resetOwner, .resetDevice:
            resetDevice()
        case .getQueueNum:
            try connection.replyU64(to: m.request, UInt64(device.maxQueues))
        case .getMaxMemSlots:
            try connection.replyU64(to: m.request, UInt64(Self.maxMemSlots))
        case .setMemTable:
            try setMemTable(m, r)
        case .addMemReg:
            try addMemoryRegion(m, r)
        case .remMemReg:
            try removeMemoryRegion(m, r)
        case .setVringNum:
            try expectPayload(m, 8)
            let i = try vringIndex(m, try r.u32(0))
            let num = try r.u32(4)
            guard num > 0, num <= device.maxQueueSize, num & (num - 1) == 0 else {
                throw VhostUserError.rejected("vring \(i) size \(num) (must be a power of two up to \(device.maxQueueSize))")
            }
            guard vrings[i].running == nil else { throw VhostUserError.rejected("vring \(i) is running") }
            vrings[i].num = num
        case .setVringAddr:
            try expectPayload(m, 40)
            let i = try vringIndex(m, try r.u32(0))
            // struct vhost_vring_addr: index, flags (bit 0: VHOST_VRING_F_LOG), desc, used, avail, log_guest_addr.
            let logUsed = try r.u32(4) & 1 != 0
            let addresses = VringAddresses(descriptorTable: try r.u64(8), availRing: try r.u64(24),
                                           usedRing: try r.u64(16), guestPhysical: false)
            let logAddress = try r.u64(32)
            if vrings[i].running != nil {
                // A running ring only changes whether its used ring is logged (QEMU, as a migration starts or ends).
                guard addresses == vrings[i].addresses else { throw VhostUserError.rejected("vring \(i) is running") }
                vrings[i].usedLogAddress = logUsed ? logAddress : nil
                session.updateDirtyLogging()
                break
            }
            vrings[i].addresses = addresses
            vrings[i].usedLogAddress = logUsed ? logAddress : nil
        case .setVringBase:
            try expectPayload(m, 8)
            let i = try vringIndex(m, try r.u32(0))
            guard vrings[i].running == nil else { throw VhostUserError.rejected("vring \(i) is running") }
            vrings[i].base = UInt16(truncatingIfNeeded: try r.u32(4))
        case .getVringBase:
            try expectPayload(m, 8)
            let raw = try r.u32(0)
            guard Int(raw) < vrings.count else { throw VhostUserError.malformed("GET_VRING_BASE index \(raw)") }
            let i = Int(raw)
            // vhost-user.rst: GET_VRING_BASE stops the ring; its kick fd is forgotten until the next start.
            session.stopQueue(i)
            vrings[i].kick = nil
            vrings[i].kickSet = false
            var p = [UInt8]()
            p.appendLE(UInt32(i))
            p.appendLE(UInt32(vrings[i].base))
            try connection.reply(to: m.request, payload: p)
        case .setVringKick, .setVringCall, .setVringErr:
            try setVringFD(m, r)
        case .setVringEnable:
            try expectPayload(m, 8)
            let i = try vringIndex(m, try r.u32(0))
            let on = try r.u32(4) != 0
            vrings[i].enabled = on
            if on { try startVringIfReady(i) } else { session.stopQueue(i) }
        case .getConfig:
            try expectPayload(m, 12)
            let offset = Int(try r.u32(0))
            let size = Int(try r.u32(4))
            guard size <= 256, offset <= 256, m.payload.count == 12 + size else {
                throw VhostUserError.malformed("GET_CONFIG offset \(offset) size \(size) payload \(m.payload.count)")
            }
            var p = Array(m.payload.prefix(12))
            p.append(contentsOf: device.readConfig(offset: offset, count: size))
            try connection.reply(to: m.request, payload: p)
        case .setConfig:
            try expectPayload(m, 12)
            let offset = Int(try r.u32(0))
            let size = Int(try r.u32(4))
            guard size <= 256, offset <= 256, m.payload.count >= 12 + size else {
                throw VhostUserError.malformed("SET_CONFIG offset \(offset) size \(size)")
            }
            guard device.writeConfig(offset: offset, bytes: Array(m.payload[12..<(12 + size)])) else {
                throw VhostUserError.rejected("config write at \(offset) (\(size) bytes) refused")
            }
            logger.info("config write at offset \(offset): \(Array(m.payload[12..<(12 + size)]))")
        case .setStatus:
            try expectPayload(m, 8)
            let s = UInt8(truncatingIfNeeded: try r.u64(0))
            // QEMU 7.2 sends status 0 at every vhost stop (migration, guest reset, shutdown), then asks each ring
            // for its base: the rings stop, and each keeps its base for GET_VRING_BASE (wiping them here made a
            // migrated guest resume at index 0). The next start sets everything again.
            if s == 0 && status != 0 {
                session.stopAllQueues()
                device.reset()
            }
            status = s
        case .getStatus:
            try connection.replyU64(to: m.request, UInt64(status))
        case .setVringEndian:
            throw VhostUserError.rejected("cross-endian rings are not supported")
        case .getInflightFD where protocolFeatures & VhostUserProtocolFeature.inflightSHMFD != 0:
            try getInflightFD(m, r)
        case .setInflightFD where protocolFeatures & VhostUserProtocolFeature.inflightSHMFD != 0:
            try setInflightFD(m, r)
        case .setLogBase where protocolFeatures & VhostUserProtocolFeature.logSHMFD != 0:
            try setLogBase(m, r)
        case .setBackendReqFD, .setLogFD, .setInflightFD:
            throw VhostUserError.rejected("\(m.request) needs a protocol feature this backend does not offer")
        case .sendRARP where protocolFeatures & VhostUserProtocolFeature.rarp != 0:
            // vhost-user.rst: the payload's first 6 bytes are the guest's MAC.
            try expectPayload(m, 8)
            guard let a = device as? MigrationAnnouncer, a.announce(mac: Array(m.payload.prefix(6))) else {
                throw VhostUserError.rejected("SEND_RARP for a MAC this device does not own")
            }
        case .netSetMTU where protocolFeatures & VhostUserProtocolFeature.netMTU != 0:
            try expectPayload(m, 8)
            guard let d = device as? HostMTUReceiver else { throw VhostUserError.rejected("NET_SET_MTU for a device without an MTU") }
            if let refused = d.setHostMTU(try r.u64(0)) { throw VhostUserError.rejected("NET_SET_MTU refused: \(refused)") }
        case .setLogBase, .getInflightFD, .iotlbMsg, .sendRARP, .netSetMTU, .vringKick:
            throw VhostUserError.malformed("\(m.request) needs a feature this backend does not offer")
        default:
            throw VhostUserError.malformed("unknown request \(m.request.rawValue)")
        }
        if m.needsReply && protocolFeatures & VhostUserProtocolFeature.replyAck != 0 && !Self.hasOwnReply(m.request) {
            try connection.replyU64(to: m.request, 0)
        }
    }

    // MARK: memory

    /// struct VhostUserMemoryRegion: guest address, size, user address, mmap offset.
    private func region(_ r: PayloadReader, at off: Int, fd: Int32) throws -> MemoryRegion {
        let gpa = try r.u64(off), size = try r.u64(off + 8), uva = try r.u64(off + 16), mo = try r.u64(off + 24)
        do {
            return try MemoryRegion(fd: fd, guestAddress: gpa, size: size, userAddress: uva, mmapOffset: mo, budget: memoryBudget)
        } catch {
            throw VhostUserError.rejected("cannot map region gpa=0x\(String(gpa, radix: 16)) size=\(size): \(error)")
        }
    }

    private func setMemTable(_ m: VhostUserMessage, _ r: PayloadReader) throws {
        try expectPayload(m, 8)
        let n = Int(try r.u32(0))
        guard n <= Self.maxMemSlots, m.payload.count >= 8 + 32 * n, m.fds.count == n else {
            throw VhostUserError.malformed("SET_MEM_TABLE with \(n) regions, \(m.fds.count) fds, \(m.payload.count) bytes")
        }
        try admitMemory(r, at: (0..<n).map { 8 + 32 * $0 })
        var regions: [MemoryRegion] = []
        for i in 0..<n { regions.append(try region(r, at: 8 + 32 * i, fd: m.fds[i])) }
        try installMemory(GuestMemory(regions: regions))
    }

    private func addMemoryRegion(_ m: VhostUserMessage, _ r: PayloadReader) throws {
        try expectPayload(m, 40)
        guard m.fds.count == 1 else { throw VhostUserError.malformed("ADD_MEM_REG with \(m.fds.count) fds") }
        guard session.memory.regions.count < Self.maxMemSlots else { throw VhostUserError.rejected("all \(Self.maxMemSlots) memory slots used") }
        try admitMemory(r, at: [8])
        let reg = try region(r, at: 8, fd: m.fds[0])
        for old in session.memory.regions where reg.guestAddress < old.guestAddress + old.size && old.guestAddress < reg.guestAddress + reg.size {
            throw VhostUserError.rejected("region at 0x\(String(reg.guestAddress, radix: 16)) overlaps an existing one")
        }
        try installMemory(GuestMemory(regions: session.memory.regions + [reg]))
    }

    private func removeMemoryRegion(_ m: VhostUserMessage, _ r: PayloadReader) throws {
        try expectPayload(m, 40)
        let gpa = try r.u64(8), size = try r.u64(16), uva = try r.u64(24)
        let kept = session.memory.regions.filter { !($0.guestAddress == gpa && $0.size == size && $0.userAddress == uva) }
        guard kept.count < session.memory.regions.count else {
            throw VhostUserError.rejected("no region at gpa=0x\(String(gpa, radix: 16)) size=\(size)")
        }
        try installMemory(GuestMemory(regions: kept))
    }

    /// The export's budget decides before anything is mapped (size + mmap_offset of each region described at `offsets`).
    private func admitMemory(_ r: PayloadReader, at offsets: [Int]) throws {
        guard let memoryBudget else { return }
        var bytes: UInt64 = 0
        for off in offsets {
            let (a, o1) = bytes.addingReportingOverflow(try r.u64(off + 8))
            let (b, o2) = a.addingReportingOverflow(try r.u64(off + 24))
            guard !o1, !o2 else { throw VhostUserError.rejected("memory regions overflow 64 bits") }
            bytes = b
        }
        if let why = memoryBudget.refusal(newBytes: bytes, currentBytes: session.memory.mappedBytes) { throw VhostUserError.rejected(why) }
    }

    /// Swaps the table through the device session (running rings move to it first), then starts ready rings.
    private func installMemory(_ new: GuestMemory) throws {
        do { try session.installMemory(new) } catch let e as DeviceSessionError { throw VhostUserError.rejected(e.description) }
    }

    // MARK: live migration (vhost-user.rst, "Migration")

    /// struct VhostUserLog: mmap_size u64, mmap_offset u64, and the log's fd. QEMU waits for an answer.
    private func setLogBase(_ m: VhostUserMessage, _ r: PayloadReader) throws {
        try expectPayload(m, 16)
        guard m.fds.count == 1 else { throw VhostUserError.malformed("SET_LOG_BASE with \(m.fds.count) fds") }
        do {
            session.dirtyLog = try DirtyLog(fd: m.fds[0], mmapSize: try r.u64(0), offset: try r.u64(8))
        } catch {
            throw VhostUserError.malformed("dirty log: \(error)")
        }
        session.updateDirtyLogging()
        try connection.replyU64(to: m.request, 0)
        let size = session.dirtyLog!.size
        logger.info("dirty log: \(size) bytes (guest memory up to \((size * 8 * DirtyLog.pageSize) >> 20) MiB)")
    }

    // MARK: in-flight tracking (vhost-user.rst, "Inflight I/O tracking")

    /// struct VhostUserInflight: mmap_size u64, mmap_offset u64, num_queues u16, queue_size u16.
    private func inflightDescription(_ r: PayloadReader) throws -> (UInt64, UInt64, Int, Int) {
        (try r.u64(0), try r.u64(8), Int(try r.u16(16)), Int(try r.u16(18)))
    }

    private func getInflightFD(_ m: VhostUserMessage, _ r: PayloadReader) throws {
        try expectPayload(m, 20)
        let (_, _, queues, size) = try inflightDescription(r)
        guard queues <= device.maxQueues, size <= Int(device.maxQueueSize) else {
            throw VhostUserError.rejected("in-flight region for \(queues) queues of \(size) (device: \(device.maxQueues) of up to \(device.maxQueueSize))")
        }
        let (region, fd): (InflightMemory, Int32)
        do { (region, fd) = try InflightMemory.create(numQueues: queues, queueSize: size) } catch {
            throw VhostUserError.rejected("in-flight region: \(error)")
        }
        defer { closeFD(fd) }
        session.inflight = region
        var p = [UInt8]()
        p.appendLE(region.mmapSize)
        p.appendLE(UInt64(0))
        p.appendLE(UInt16(queues))
        p.appendLE(UInt16(size))
        p.appendLE(UInt32(0))
        try connection.reply(to: m.request, payload: p, fds: [fd])
        logger.debug("in-flight region created: \(queues) queues of \(size), \(region.mmapSize) bytes")
    }

    private func setInflightFD(_ m: VhostUserMessage, _ r: PayloadReader) throws {
        try expectPayload(m, 20)
        guard m.fds.count == 1 else { throw VhostUserError.malformed("SET_INFLIGHT_FD with \(m.fds.count) fds") }
        let (size, offset, queues, qsize) = try inflightDescription(r)
        guard queues <= device.maxQueues, qsize <= Int(device.maxQueueSize) else {
            throw VhostUserError.rejected("in-flight region for \(queues) queues of \(qsize)")
        }
        do {
            session.inflight = try InflightMemory(fd: m.fds[0], mmapSize: size, offset: offset, numQueues: queues, queueSize: qsize)
        } catch {
            throw VhostUserError.rejected("in-flight region: \(error)")
        }
    }

    // MARK: vrings

    private func setVringFD(_ m: VhostUserMessage, _ r: PayloadReader) throws {
        try expectPayload(m, 8)
        let v = try r.u64(0)
        let i = try vringIndex(m, UInt32(v & 0xff))
        // Bit 8 set: no fd (polling mode for kick, no interrupts for call).
        let noFD = v & 0x100 != 0
        guard noFD ? m.fds.isEmpty : m.fds.count == 1 else {
            throw VhostUserError.malformed("\(m.request) for vring \(i) with \(m.fds.count) fds")
        }
        var efd: EventFD?
        if !noFD {
            // Only a non-blocking eventfd: a blocking fd or a pipe from the frontend could stall the poller.
            guard let e = EventFD(adoptingPeer: m.fds[0]) else {
                throw VhostUserError.rejected("\(m.request) for vring \(i): the fd is not an eventfd")
            }
            adoptedFDs.append(m.fds[0])
            efd = e
        }
        switch m.request {
        case .setVringKick:
            if vrings[i].running != nil { session.stopQueue(i) }
            guard !noFD else { throw VhostUserError.rejected("vring \(i): polling without a kick fd is not supported") }
            vrings[i].kick = efd
            vrings[i].kickSet = true
            // Without protocol features a ring starts as soon as it has a kick fd (vhost-user.rst, "Ring states").
            if !protocolFeaturesNegotiated { vrings[i].enabled = true }
            try startVringIfReady(i)
        case .setVringCall:
            session.setInterrupt(i, efd.map { .eventFD($0) })
        default:
            vrings[i].err = efd
        }
    }

    private func startVringIfReady(_ i: Int) throws {
        do { try session.startQueueIfReady(i) } catch let e as DeviceSessionError { throw VhostUserError.rejected(e.description) }
    }

    private func resetDevice() {
        session.reset()
        status = 0
    }

    /// Frontend gone: stop every ring, drop mappings and fds, reset the device for the next frontend.
    func teardown() {
        session.teardown()
        status = 0
        protocolFeatures = 0
    }
}
