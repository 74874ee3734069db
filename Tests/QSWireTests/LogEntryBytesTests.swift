import QSBytes
import QSModel
import XCTest

/// The log entry's bytes are hashed and replicated verbatim: every node, old or new, must
/// encode the same entry to the same bytes. These spell the documented layout out byte by
/// byte, independently of the encoder.
final class LogEntryBytesTests: XCTestCase {
    func be(_ v: UInt64, _ width: Int) -> [UInt8] { (0..<width).reversed().map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
    func blob(_ b: [UInt8]) -> [UInt8] { be(UInt64(b.count), 4) + b }

    let ops: [Mutation] = [
        .set(key: Array("k1".utf8), value: Array("value".utf8), expiry: nil),
        .set(key: Array("k2".utf8), value: [], expiry: 1_700_000_000),
        .delete(key: Array("gone".utf8)),
        .clearPrefix(Array("zone:".utf8)),
    ]

    var expectedOps: [UInt8] {
        be(4, 4)
            + [1, 0] + blob(Array("k1".utf8)) + blob(Array("value".utf8))
            + [1, 1] + be(1_700_000_000, 8) + blob(Array("k2".utf8)) + blob([])
            + [2] + blob(Array("gone".utf8))
            + [3] + blob(Array("zone:".utf8))
    }

    func testVersion1Layout() throws {
        let e = LogEntry(commitTimeNs: 0x0102_0304_0506_0708, origin: Origin(sourceID: "kt", position: 42), operations: ops)
        let expected: [UInt8] = [1] + be(0x0102_0304_0506_0708, 8) + be(2, 2) + Array("kt".utf8) + be(42, 8) + expectedOps
        XCTAssertEqual(e.encoded(), expected)
        XCTAssertEqual(e.encodedCount, expected.count)
        XCTAssertEqual(try LogEntry.decode(expected), e)
    }

    func testVersion2CarriesTheCopyCursor() throws {
        let e = LogEntry(commitTimeNs: 7, origin: Origin(sourceID: "s", position: 1), operations: ops, copyCursor: [9, 8, 7])
        let expected: [UInt8] = [2] + be(7, 8) + be(1, 2) + Array("s".utf8) + be(1, 8) + expectedOps + blob([9, 8, 7])
        XCTAssertEqual(e.encoded(), expected)
        XCTAssertEqual(e.encodedCount, expected.count)
        XCTAssertEqual(try LogEntry.decode(expected), e)
    }

    func testVersion3RecordsADescriptorAndNothingElse() throws {
        let e = LogEntry(commitTimeNs: 7, origin: Origin(sourceID: "s", position: 5), descriptor: "db-map 0=")
        let expected: [UInt8] = [3] + be(7, 8) + be(1, 2) + Array("s".utf8) + be(5, 8) + be(0, 4) + be(9, 2) + Array("db-map 0=".utf8)
        XCTAssertEqual(e.encoded(), expected)
        XCTAssertEqual(e.encodedCount, expected.count)
        let decoded = try LogEntry.decode(expected)
        XCTAssertEqual(decoded, e)
        XCTAssertFalse(decoded.movesCheckpoint)
        XCTAssertEqual(try LogEntry.summary(of: expected).operations, 0)
        // With operations, or without its descriptor: refused by both readers.
        let withOps: [UInt8] = [3] + be(7, 8) + be(1, 2) + Array("s".utf8) + be(5, 8) + expectedOps + be(9, 2) + Array("db-map 0=".utf8)
        XCTAssertThrowsError(try LogEntry.decode(withOps))
        XCTAssertThrowsError(try LogEntry.summary(of: withOps))
        XCTAssertThrowsError(try LogEntry.decode(Array(expected.dropLast(11))))
        XCTAssertThrowsError(try LogEntry.summary(of: Array(expected.dropLast(11))))
        XCTAssertThrowsError(try LogEntry.decode([4] + expected.dropFirst()), "no version 4")
    }

    func testTheWriteProtocolsListIsTheSameBytes() {
        var w = ByteWriter()
        w.writeU8(0xEE) // something before: the list is appended, not written over
        Mutation.encodeList(ops, into: &w)
        XCTAssertEqual(w.bytes, [0xEE] + expectedOps)
        XCTAssertEqual(Mutation.listCount(ops), expectedOps.count)
    }

    func testAnEmptyEntryAndAnEmptyList() throws {
        let e = LogEntry(commitTimeNs: 0, origin: Origin(sourceID: "", position: 0), operations: [])
        XCTAssertEqual(e.encoded(), [1] + be(0, 8) + be(0, 2) + be(0, 8) + be(0, 4))
    }
}
