import NIOCore
import NIOTestUtils
import QSBytes
import QSModel
import QSWire
import XCTest

final class WireTests: XCTestCase {
    func framed(_ f: Frame) -> ByteBuffer {
        var b = ByteBuffer()
        try? FrameEncoder().encode(data: f, out: &b)
        return b
    }

    func testFrameDecoderHandlesEverySplit() throws {
        let frames = [Frame(type: 1, payload: [1, 2, 3]), Frame(type: 0x81, payload: []), Frame(type: 5, payload: Array(repeating: 9, count: 300))]
        let pairs = frames.map { (framed($0), [$0]) }
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs) { FrameDecoder(maxFrameBytes: 1024) }
    }

    func testOversizedFrameIsRefusedFromItsLengthAlone() throws {
        var decoder = FrameDecoder(maxFrameBytes: 100)
        var buf = ByteBuffer(bytes: [0, 0, 1, 0])  // 256, nothing else sent
        XCTAssertThrowsError(try decoder.decode(buffer: &buf)) { error in
            XCTAssertEqual(error as? DecodeError, DecodeError(offset: 0, reason: "frame of 256 bytes exceeds the limit of 100 bytes", kind: .tooLarge))
        }
        var empty = ByteBuffer(bytes: [0, 0, 0, 0])
        XCTAssertThrowsError(try decoder.decode(buffer: &empty))
    }

    /// An HTTP port given for a write port: the "length" is the bytes `HTTP` (1213486160),
    /// and the refusal says what the peer speaks instead of a frame size.
    func testAPeerSpeakingHTTPIsNamedNotMeasured() throws {
        for text in ["HTTP/1.1 400 Bad Request\r\n\r\n", "GET / HTTP/1.1\r\n\r\n"] {
            var decoder = FrameDecoder()
            var buffer = ByteBuffer(string: text)
            XCTAssertThrowsError(try decoder.decode(buffer: &buffer)) { error in
                let reason = (error as? DecodeError)?.reason ?? "\(error)"
                XCTAssertTrue(reason.contains("speaks HTTP") && reason.contains("write port"), reason)
                XCTAssertFalse(reason.contains("bytes exceeds"), reason)
            }
        }
        XCTAssertEqual(FrameDecoder.tooLarge(70_000_000, limit: 1024), "frame of 70000000 bytes exceeds the limit of 1024 bytes")
    }

    func testRequestsRoundTrip() throws {
        let requests: [Request] = [
            .batch(.init(token: [1, 2], sourceID: "kt:host:1978", expected: 5, new: 9,
                         operations: [.set(key: [0, 1], value: [], expiry: 77), .set(key: [], value: [1], expiry: nil), .delete(key: [3]), .clearPrefix([4])])),
            .getCheckpoint(sourceID: "x"), .head, .readLog(from: 3, count: 10), .get(key: [0xFF]),
            .scan(prefix: [1], cursor: [2, 3], limit: 7, asOf: 99),
            .hello(token: [9, 8], client: "qsqsbridge mode=compatible source=qs://l:7400"),
            .changeRole(token: [9, 9], change: .promote), .changeRole(token: [], change: .demote),
            .append(token: [1], entries: PackedEntries([StoredEntry(index: 4, hash: [UInt8](repeating: 2, count: 32), bytes: [5, 6])]), sourceTimeNs: 1_700_000_000_000_000_000),
            .append(token: [], entries: PackedEntries([]), sourceTimeNs: 0),
            .setDescriptor(token: [3], sourceID: "kt", descriptor: "db-map 0=,1=aux/", replace: false),
            .setDescriptor(token: [], sourceID: "kt", descriptor: "db-map 0=", replace: true),
        ]
        for r in requests { XCTAssertEqual(try Request.decode(r.frame()), r) }
        XCTAssertEqual(Request.setDescriptor(token: [1], sourceID: "s", descriptor: "d", replace: true).frame(),
                       Frame(type: 0x19, payload: [0, 0, 0, 1, 1, 0, 1, 0x73, 0, 1, 0x64, 1]))
        XCTAssertThrowsError(try Request.decode(Frame(type: 0x19, payload: [0, 0, 0, 0, 0, 1, 0x73, 0, 1, 0x64, 2])), "replace is 0 or 1")
        XCTAssertTrue(Request.setDescriptor(token: [], sourceID: "s", descriptor: "d", replace: false).isWrite, "carries the write token")
        XCTAssertEqual(Request.changeRole(token: [1], change: .demote).frame().payload, [0, 0, 0, 1, 1, 2])
        XCTAssertThrowsError(try Request.decode(Frame(type: 0x16, payload: [0, 0, 0, 0, 3])), "an unknown role change is refused")
        XCTAssertTrue(Request.changeRole(token: [], change: .promote).isWrite, "carries the write token")
        // An Append without a source time is byte for byte the frame older bridges send.
        XCTAssertEqual(Request.append(token: [7], entries: PackedEntries([]), sourceTimeNs: 0).frame().payload, [0, 0, 0, 1, 7, 0, 0, 0, 0])
    }

    /// An initial copy's cursor rides at the end of a Batch; without one the frame is byte
    /// for byte the Batch older nodes read.
    func testCopyCursorIsAnOptionalTailOfABatch() throws {
        let plain = Request.Batch(token: [1], sourceID: "kt", expected: 3, new: 4, operations: [.delete(key: [7])])
        var copying = plain
        copying.copyCursor = [1, 0, 0, 0, 9]
        for r in [Request.batch(plain), .batch(copying), .getCopyCursor(sourceID: "kt:127.0.0.1:1978")] {
            XCTAssertEqual(try Request.decode(r.frame()), r)
        }
        XCTAssertEqual(Request.batch(copying).frame().payload, Request.batch(plain).frame().payload + [0, 0, 0, 5, 1, 0, 0, 0, 9])
        XCTAssertThrowsError(try Request.decode(Frame(type: 0x01, payload: Request.batch(plain).frame().payload + [0, 0, 0, 9, 1])),
                             "a cut cursor is malformed")
    }

    /// SnapshotFrom names the snapshot held in part only when it resumes one; its answers
    /// (start, waiting, done) round-trip, and a chunk's bytes are the frame's payload as they are.
    func testSnapshotFromAndItsAnswersRoundTrip() throws {
        let hash = [UInt8](repeating: 3, count: 32), digest = [UInt8](repeating: 0xAB, count: 16)
        let resume = SnapshotResume(index: 42, hash: hash, size: 1 << 30, offset: 5 << 20, digest: digest)
        for r in [Request.snapshotFrom(token: [], resume: nil), .snapshotFrom(token: [1, 2], resume: resume)] {
            XCTAssertEqual(try Request.decode(r.frame()), r)
            XCTAssertTrue(r.isReplication)
            XCTAssertEqual(r.name, "snapshot")
        }
        XCTAssertEqual(Request.snapshotFrom(token: [], resume: nil).frame().payload, [UInt8](repeating: 0, count: 12),
                       "no resume: an empty token and offset 0")
        XCTAssertThrowsError(try Request.decode(Frame(type: 0x18, payload: Array(Request.snapshotFrom(token: [], resume: resume).frame().payload.dropLast()))),
                             "a cut digest is malformed")
        for r in [Response.snapshotStart(index: 42, hash: hash, size: 1 << 30, offset: 5 << 20), .snapshotDone(digest: digest),
                  .snapshotWaiting(queued: 3), .snapshotChunk([1, 2, 3])] {
            XCTAssertEqual(try Response.decode(r.frame()), r)
        }
        XCTAssertEqual(Response.snapshotChunk([9, 8, 7]).frame(), Frame(type: 0x8A, payload: [9, 8, 7]))
    }

    /// The replication token rides at the end of Subscribe and Snapshot; without one the
    /// frames are byte for byte those older clients send.
    func testReplicationTokenIsAnOptionalTail() throws {
        let hash = [UInt8](repeating: 9, count: 32)
        for r in [Request.subscribe(fromIndex: 7, hash: hash, token: Array("secret-token".utf8)), .subscribe(fromIndex: 7, hash: hash, token: []),
                  .snapshot(token: [1, 2, 3]), .snapshot(token: [])] {
            XCTAssertEqual(try Request.decode(r.frame()), r)
            XCTAssertTrue(r.isReplication)
        }
        XCTAssertEqual(Request.subscribe(fromIndex: 7, hash: hash, token: []).frame().payload, [0, 0, 0, 0, 0, 0, 0, 7] + hash)
        XCTAssertEqual(Request.snapshot(token: []).frame().payload, [])
        XCTAssertEqual(Request.snapshot(token: [5]).token, [5])
        XCTAssertThrowsError(try Request.decode(Frame(type: 0x11, payload: [0, 0, 0, 9, 1])), "a cut token is malformed")
        // Lengths differing by a multiple of 256 are still different tokens.
        XCTAssertFalse(constantTimeEqual([], [UInt8](repeating: 0, count: 256)))
        XCTAssertTrue(constantTimeEqual(Array("secret-token".utf8), Array("secret-token".utf8)))
        XCTAssertFalse(constantTimeEqual(Array("secret-token".utf8), Array("secret-tokeN".utf8)))
    }

    func testResponsesRoundTrip() throws {
        let responses: [Response] = [
            .applied(logIndex: 4, kept: 2, dropped: 1), .applied(logIndex: nil, kept: 0, dropped: 3), .conflict(current: 42),
            .checkpoint(nil), .checkpoint(0), .checkpoint(17),
            .head(Head(index: 3, hash: Array(repeating: 5, count: 32), commitTimeNs: 8)),
            .entries([StoredEntry(index: 1, hash: Array(repeating: 1, count: 32), bytes: [1, 2, 3])]),
            .value(nil), .value(Record(value: [1], expiry: 5)),
            .page(records: [.init(key: [1], record: Record(value: [2], expiry: nil))], next: [9]), .page(records: [], next: nil),
            .error(.unauthorized, "nope"),
        ]
        for r in responses { XCTAssertEqual(try Response.decode(r.frame()), r) }
    }

    func testMalformedPayloadsAreErrorsNotCrashes() {
        XCTAssertThrowsError(try Request.decode(Frame(type: 0x7E, payload: [])))
        XCTAssertThrowsError(try Request.decode(Frame(type: 0x01, payload: [0, 0, 0, 9])))
        // Mutation count claiming far more than the payload holds.
        XCTAssertThrowsError(try Request.decode(Frame(type: 0x01, payload: [0, 0, 0, 0, 0, 1, 0x61] + Array(repeating: 0, count: 16) + [0xFF, 0xFF, 0xFF, 0xFF])))
        XCTAssertThrowsError(try Request.decode(Frame(type: 0x03, payload: [1])), "trailing bytes are refused")
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let n = Int.random(in: 0..<64, using: &rng)
            let payload = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            _ = try? Request.decode(Frame(type: UInt8.random(in: 0...8, using: &rng), payload: payload))
            _ = try? Response.decode(Frame(type: UInt8.random(in: 0x80...0x88, using: &rng), payload: payload))
        }
    }
}
