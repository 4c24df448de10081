import XCTest
import Virtio
import VhostUserTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// ChainSegments helpers over a real multi-segment chain: readable 3 + 5 + 7 bytes, writable 4 + 6 + 2 bytes.
final class ChainSegmentsTests: XCTestCase {
    var f: RingFixture!
    var vq: SplitVirtqueue!
    var seg = ChainSegments(capacity: 16)
    let readable = pattern(15, seed: 42)           // the readable area as one logical byte string
    let readableLengths = [3, 5, 7]
    let writableLengths = [4, 6, 2]
    var writableGPAs: [UInt64] = []

    override func setUpWithError() throws {
        f = try RingFixture(queueSize: 8)
        vq = try f.queue()
        var buffers: [DriverVirtqueue.Buffer] = []
        var at = 0
        for n in readableLengths {
            buffers.append(.init(gpa: f.buffer(Array(readable[at..<at + n])), length: UInt32(n), writable: false))
            at += n
        }
        writableGPAs = writableLengths.map { f.zeroed($0) }
        for (gpa, n) in zip(writableGPAs, writableLengths) { buffers.append(.init(gpa: gpa, length: UInt32(n), writable: true)) }
        f.driver.add(buffers)
        try walkNext(vq, &seg)
    }

    override func tearDown() {
        seg.deallocate()
        f = nil
        vq = nil
    }

    /// The writable area as the driver sees it, in chain order.
    func writableArea() -> [UInt8] {
        zip(writableGPAs, writableLengths).flatMap { f.ram.read($0, $1) }
    }

    func copyReadable(_ offset: Int, _ length: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0xEE, count: length)
        let ok = out.withUnsafeMutableBytes { seg.copyReadable(offset: offset, into: $0.baseAddress!, length: length) }
        return ok ? out : nil
    }

    func testCountsAndTotalsDescribeTheChain() {
        XCTAssertEqual(seg.count, 6)
        XCTAssertEqual(seg.readableCount, 3)
        XCTAssertEqual(seg.writableCount, 3)
        XCTAssertEqual(seg.readableBytes, 15)
        XCTAssertEqual(seg.writableBytes, 12)
        XCTAssertEqual(seg.lengths, readableLengths + writableLengths)
    }

    func testCopyReadableAcrossSegmentBoundaries() {
        for (offset, length) in [(0, 15), (2, 4), (7, 6), (8, 7), (3, 5), (14, 1), (1, 13)] {
            XCTAssertEqual(copyReadable(offset, length), Array(readable[offset..<offset + length]),
                           "offset \(offset) length \(length)")
        }
        XCTAssertEqual(copyReadable(15, 0), [])
    }

    func testCopyReadableFailsWhenReadableAreaIsTooShort() {
        XCTAssertNil(copyReadable(10, 6))
        XCTAssertNil(copyReadable(0, 16))
        XCTAssertNil(copyReadable(15, 1), "the writable area is not readable")
        XCTAssertNil(copyReadable(100, 1))
    }

    func testCopyToWritableAcrossSegmentBoundaries() {
        let data = pattern(12, seed: 7)
        XCTAssertEqual(data.withUnsafeBytes { seg.copyToWritable(offset: 0, from: $0.baseAddress!, length: 12) }, 12)
        XCTAssertEqual(writableArea(), data)

        let more: [UInt8] = [0xA1, 0xA2, 0xA3, 0xA4, 0xA5]
        XCTAssertEqual(more.withUnsafeBytes { seg.copyToWritable(offset: 3, from: $0.baseAddress!, length: 5) }, 5)
        var expected = data
        expected.replaceSubrange(3..<8, with: more)
        XCTAssertEqual(writableArea(), expected)
        XCTAssertEqual(copyReadable(0, 15), readable, "the readable area is untouched")
    }

    func testCopyToWritableReturnsHowManyBytesFit() {
        let data: [UInt8] = [1, 2, 3, 4, 5]
        XCTAssertEqual(data.withUnsafeBytes { seg.copyToWritable(offset: 10, from: $0.baseAddress!, length: 5) }, 2)
        XCTAssertEqual(f.ram.read(writableGPAs[2], 2), [1, 2])
        XCTAssertEqual(data.withUnsafeBytes { seg.copyToWritable(offset: 12, from: $0.baseAddress!, length: 5) }, 0)
        XCTAssertEqual(f.ram.read(writableGPAs[0], 4), [0, 0, 0, 0])
    }

    func testSliceOfReadableAreaCrossesSegments() throws {
        let out = UnsafeMutablePointer<iovec>.allocate(capacity: 8)
        defer { out.deallocate() }
        let n = try XCTUnwrap(seg.slice(writable: false, offset: 2, length: 8, into: out, outCapacity: 8))
        XCTAssertEqual(n, 3)
        XCTAssertEqual((0..<n).map { out[$0].iov_len }, [1, 5, 2])
        XCTAssertEqual(out[0].iov_base, seg.base(0)! + 2)
        XCTAssertEqual(out[1].iov_base, seg.base(1))
        XCTAssertEqual(out[2].iov_base, seg.base(2))
        let joined = (0..<n).flatMap { bytes(out[$0].iov_base!, out[$0].iov_len) }
        XCTAssertEqual(joined, Array(readable[2..<10]))
    }

    func testSliceOfWritableAreaStartsAfterReadableSegments() throws {
        let out = UnsafeMutablePointer<iovec>.allocate(capacity: 8)
        defer { out.deallocate() }
        XCTAssertEqual(seg.slice(writable: true, offset: 4, length: 6, into: out, outCapacity: 8), 1)
        XCTAssertEqual(out[0].iov_base, seg.base(4))
        XCTAssertEqual(out[0].iov_len, 6)
        XCTAssertEqual(seg.slice(writable: true, offset: 9, length: 3, into: out, outCapacity: 8), 2)
        XCTAssertEqual(out[0].iov_base, seg.base(4)! + 5)
        XCTAssertEqual(out[0].iov_len, 1)
        XCTAssertEqual(out[1].iov_base, seg.base(5))
        XCTAssertEqual(out[1].iov_len, 2)
        // Writing through the slice lands in the driver's buffers.
        out[0].iov_base!.storeBytes(of: 0x77, as: UInt8.self)
        XCTAssertEqual(f.ram.read(writableGPAs[1] + 5, 1), [0x77])
    }

    func testSliceFailsWhenAreaTooShortOrOutputTooSmall() {
        let out = UnsafeMutablePointer<iovec>.allocate(capacity: 8)
        defer { out.deallocate() }
        XCTAssertNil(seg.slice(writable: false, offset: 10, length: 6, into: out, outCapacity: 8))
        XCTAssertNil(seg.slice(writable: true, offset: 0, length: 13, into: out, outCapacity: 8))
        XCTAssertNil(seg.slice(writable: false, offset: 0, length: 15, into: out, outCapacity: 2))
        XCTAssertEqual(seg.slice(writable: false, offset: 0, length: 15, into: out, outCapacity: 3), 3)
        XCTAssertEqual(seg.slice(writable: false, offset: 5, length: 0, into: out, outCapacity: 8), 0)
    }

    func testLastWritableBytePointsAtEndOfLastWritableBuffer() throws {
        let p = try XCTUnwrap(seg.lastWritableByte)
        p.pointee = 0x5A
        XCTAssertEqual(f.ram.read(writableGPAs[2], 2), [0, 0x5A])
        XCTAssertEqual(writableArea().filter { $0 != 0 }, [0x5A], "only that byte changed")
    }

    func testLastWritableByteIsNilWithoutWritableBuffers() throws {
        f.driver.add([.init(gpa: f.buffer([1, 2, 3]), length: 3, writable: false)])
        try walkNext(vq, &seg)
        XCTAssertNil(seg.lastWritableByte)
        XCTAssertEqual(seg.writableCount, 0)
    }
}
