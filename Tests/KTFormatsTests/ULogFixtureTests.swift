import KTFormats
import NIOCore
import NIOTestUtils
import QSBytes
import XCTest

final class ULogFixtureTests: XCTestCase {
    func testBasicULogFilesRebuildByteForByte() throws {
        for (name, bytes) in try Fixtures.ulogFiles("basic") {
            let contents = try ULogFile.parse(bytes)
            XCTAssertEqual(contents.trailingBytes, 0, name)
            XCTAssertEqual(contents.header.size, UInt64(bytes.count), name)
            var rebuilt = contents.header.encoded()
            for r in contents.records { r.encode(into: &rebuilt) }
            XCTAssertEqual(rebuilt, bytes, name)
        }
    }

    func testHeaderTimestampIsNewestTimestampLogged() throws {
        let files = try Fixtures.ulogFiles("basic").map { try ULogFile.parse($0.bytes) }
        XCTAssertEqual(files.map(\.header.timestamp), [1_795_560_696_183_000_000, 1_795_560_696_287_000_001])
        for f in files { XCTAssertEqual(f.header.timestamp, f.records.last?.timestamp) }
    }

    func testBasicULogHas903MessagesThatDecodeAndReencode() throws {
        let records = try Fixtures.ulogFiles("basic").flatMap { try ULogFile.parse($0.bytes).records }
        XCTAssertEqual(records.count, 903)
        for r in records {
            let m = try r.decodedMessage()
            XCTAssertEqual(m.sid, 7)
            XCTAssertEqual(m.encoded(), r.message)
        }
        let timestamps = records.map(\.timestamp)
        XCTAssertEqual(timestamps, timestamps.sorted())
        XCTAssertEqual(Set(timestamps).count, timestamps.count)
    }

    func testReplayingULogGivesFinalState() throws {
        for set in ["basic", "medium"] {
            let records = try Fixtures.ulogFiles(set).flatMap { try ULogFile.parse($0.bytes).records }
                .sorted { $0.timestamp < $1.timestamp }
            let messages = try records.map { try $0.decodedMessage() }
            let state = Fixtures.replay(messages, now: try Fixtures.recordedAt(set))
            let expected = try Fixtures.finalState(set)
            XCTAssertEqual(state.count, expected.count, set)
            XCTAssertEqual(state, expected, set)
        }
        XCTAssertEqual(try Fixtures.finalState("basic").count, 134)
        XCTAssertEqual(try Fixtures.finalState("medium").count, 3764)
    }

    func testMediumULogHas20880Messages() throws {
        let files = try Fixtures.ulogFiles("medium")
        XCTAssertEqual(files.count, 8)
        let count = try files.reduce(0) { $0 + (try ULogFile.parse($1.bytes).records.count) }
        XCTAssertEqual(count, 20_880)
    }

    func testRecordDecoderHandlesEverySplit() throws {
        // A few records: the verifier tries every split, so its cost grows fast with the input.
        let records = Array(try ULogFile.parse(try Fixtures.ulogFiles("basic")[0].bytes).records.prefix(3))
        let body = ByteBuffer(bytes: records.flatMap { $0.encoded() })
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: [(body, records)]) { ULogRecordDecoder() }
    }

    func testBadRecordMagicReportsOffset() throws {
        var bytes = try Fixtures.ulogFiles("basic")[0].bytes
        bytes[17] = 0x42
        XCTAssertThrowsError(try ULogFile.parse(bytes)) { error in
            XCTAssertEqual(error as? DecodeError, .badMagic(0x42, expected: "record begin 0xA1", offset: 17))
        }
    }

    func testEncodeWholeFileAndResumeAfterTimestamp() throws {
        let files = try Fixtures.ulogFiles("basic")
        let contents = try files.map { try ULogFile.parse($0.bytes) }
        XCTAssertEqual(ULogFile.encode(records: contents[0].records), files[0].bytes)
        let all = contents.flatMap(\.records)
        let resumed = ULogFile.records(after: all[99].timestamp, in: contents)
        XCTAssertEqual(resumed, Array(all[100...]))
        XCTAssertEqual(ULogFile.records(after: all.last?.timestamp ?? 0, in: contents), [])
    }

    func testFileNames() {
        XCTAssertEqual(ULogFile.fileName(number: 1), "0000000001.ulog")
        XCTAssertEqual(ULogFile.fileNumber(of: "0000000042.ulog"), 42)
        XCTAssertNil(ULogFile.fileNumber(of: "42.ulog"))
        XCTAssertNil(ULogFile.fileNumber(of: "0000000042.log"))
    }
}
