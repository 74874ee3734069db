import Foundation
import KTFormats
import NIOCore
import NIOEmbedded
import NIOTestUtils
import QSBytes
import QSCaptures
import QSWire
import XCTest

/// Every decoder that reads files reads them with the same decoder as a socket: the same
/// bytes give the same values, and the same damage the same error at the same offset,
/// whether they arrive on a connection or from a file read in chunks.
final class FileAndSocketDecodingTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("qs-codec-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    /// Writes `bytes` to a file and decodes it through `DecodingFileReader` in small chunks,
    /// so messages straddle chunk boundaries.
    func fromFile<D: NIOSingleStepByteToMessageDecoder>(
        _ bytes: [UInt8], prefix: [UInt8] = [], _ decoder: D, maximumBufferSize: Int = 1 << 20
    ) throws -> [D.InboundOut] {
        let path = directory.appendingPathComponent("input-\(UUID().uuidString)").path
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(prefix + bytes)))
        let reader = try DecodingFileReader(path: path, decoder: decoder, startOffset: prefix.count,
                                            maximumBufferSize: maximumBufferSize, chunkSize: 7)
        defer { reader.close() }
        var out: [D.InboundOut] = []
        while let (_, message) = try reader.next() { out.append(message) }
        out += try reader.finish().map(\.message)
        return out
    }

    /// Feeds `bytes` to the decoder on a channel, three bytes per read, then closes it.
    func fromSocket<D: NIOSingleStepByteToMessageDecoder>(
        _ bytes: [UInt8], _ decoder: D, maximumBufferSize: Int = 1 << 20
    ) throws -> [D.InboundOut] {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(decoder, maximumBufferSize: maximumBufferSize))
        var out: [D.InboundOut] = []
        func drain() throws { while let m = try channel.readInbound(as: D.InboundOut.self) { out.append(m) } }
        var rest = bytes[...]
        do {
            while !rest.isEmpty {
                try channel.writeInbound(ByteBuffer(bytes: rest.prefix(3)))
                rest = rest.dropFirst(3)
                try drain()
            }
            _ = try channel.finish()
        } catch {
            try? drain()
            throw error
        }
        try drain()
        return out
    }

    // MARK: KT replication stream (captures and the live client)

    let replication: [ReplicationFrame] = [
        .accepted,
        .update(timestamp: 1_700_000_000_000_000_001, message: KTUpdateMessage(sid: 1, db: 0, operation: .set(key: Array("k".utf8), value: Array("v".utf8), expiration: KTExpiration.never)).encoded()),
        .heartbeat(timestamp: 1_700_000_000_000_000_002),
        .update(timestamp: 1_700_000_000_000_000_003, message: KTUpdateMessage(sid: 1, db: 2, operation: .remove(key: Array("gone".utf8))).encoded()),
    ]

    func testReplicationStreamDecodesTheSameFromAFileAndASocket() throws {
        let bytes = replication.flatMap { $0.encoded() }
        XCTAssertEqual(try fromFile(bytes, ReplicationFrameDecoder()), replication)
        XCTAssertEqual(try fromSocket(bytes, ReplicationFrameDecoder()), replication)
    }

    func testReplicationDamageIsTheSameErrorFromAFileAndASocket() throws {
        let whole = replication.flatMap { $0.encoded() }
        let bad = whole + [0x77]
        let expected = DecodeError.badMagic(0x77, expected: "replication frame 0xB1 or 0xB0", offset: whole.count)
        XCTAssertThrowsError(try fromFile(bad, ReplicationFrameDecoder())) { XCTAssertEqual($0 as? DecodeError, expected) }
        XCTAssertThrowsError(try fromSocket(bad, ReplicationFrameDecoder())) { XCTAssertEqual($0 as? DecodeError, expected) }

        let cut = whole + Array(replication[1].encoded().prefix(6))
        for result in [Result { try fromFile(cut, ReplicationFrameDecoder()) }, Result { try fromSocket(cut, ReplicationFrameDecoder()) }] {
            XCTAssertThrowsError(try result.get()) { error in
                XCTAssertEqual((error as? DecodeError)?.kind, .truncated)
                XCTAssertEqual((error as? DecodeError)?.offset, whole.count)
            }
        }

        var oversized = ByteWriter()
        oversized.writeU8(KTBinaryMagic.replication)
        oversized.writeU64(9)
        oversized.writeU32(1 << 30)
        let big = ReplicationFrame.accepted.encoded() + oversized.bytes
        for result in [Result { try fromFile(big, ReplicationFrameDecoder(maxMessageBytes: 1024)) },
                       Result { try fromSocket(big, ReplicationFrameDecoder(maxMessageBytes: 1024)) }] {
            XCTAssertThrowsError(try result.get()) { error in
                XCTAssertEqual(error as? DecodeError, DecodeError(
                    offset: 1, reason: "the update at timestamp 9 is a 1073741824-byte message, over the 1024-byte limit", kind: .tooLarge))
            }
        }
    }

    func testAKTCaptureNamesTheFileOffsetOfACutFrame() throws {
        let whole = replication.flatMap { $0.encoded() }
        let path = directory.appendingPathComponent("stream.bin").path
        FileManager.default.createFile(atPath: path, contents: Data(whole + [KTBinaryMagic.nop, 0, 0]))
        var reader = try KTCaptureReader(path: path)
        var frames: [ReplicationFrame] = []
        XCTAssertThrowsError(try { while let (_, f) = try reader.next() { frames.append(f) } }()) { error in
            XCTAssertEqual((error as? CaptureDamage)?.truncated, true)
            XCTAssertEqual((error as? CaptureDamage)?.offset, whole.count)
        }
        XCTAssertEqual(frames, replication)
    }

    // MARK: QS frames (captures and the write/replication protocol)

    let frames: [Frame] = [
        Frame(type: 0x85, payload: Array(0..<40)),
        Frame(type: 0x88, payload: [1, 2, 3]),
        Frame(type: 0x01, payload: []),
    ]

    func testQSFramesDecodeTheSameFromAFileAndASocket() throws {
        let bytes = frames.flatMap(QSCapture.bytes(of:))
        let header = QSCapture.header(fromIndex: 7, hash: [UInt8](repeating: 9, count: 32))
        XCTAssertEqual(try fromFile(bytes, prefix: header, FrameDecoder()), frames)
        XCTAssertEqual(try fromSocket(bytes, FrameDecoder()), frames)
    }

    func testQSFrameDamageIsTheSameErrorFromAFileAndASocket() throws {
        let whole = frames.flatMap(QSCapture.bytes(of:))
        let bad = whole + [0, 0, 0x10, 0]
        // Offsets count from the first decoded byte: the file's are shifted by its header.
        let header = QSCapture.header(fromIndex: 0, hash: [])
        let expected = DecodeError(offset: whole.count, reason: "frame of 4096 bytes exceeds the limit of 1024 bytes", kind: .tooLarge)
        XCTAssertThrowsError(try fromFile(bad, prefix: header, FrameDecoder(maxFrameBytes: 1024))) {
            XCTAssertEqual($0 as? DecodeError, expected.shifted(by: header.count))
        }
        XCTAssertThrowsError(try fromSocket(bad, FrameDecoder(maxFrameBytes: 1024))) { XCTAssertEqual($0 as? DecodeError, expected) }
    }

    func testQSFrameDecoderHandlesEverySplit() throws {
        let bytes = frames.flatMap(QSCapture.bytes(of:))
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: [(ByteBuffer(bytes: bytes), frames)]) { FrameDecoder() }
    }

    // MARK: ulog records

    let records: [ULogFile.Record] = [
        ULogFile.Record(timestamp: 10, message: KTUpdateMessage(sid: 1, db: 0, operation: .clear).encoded()),
        ULogFile.Record(timestamp: 11, message: KTUpdateMessage(sid: 1, db: 0, operation: .remove(key: [1, 2])).encoded()),
    ]

    func testULogRecordsDecodeTheSameFromAFileAndASocket() throws {
        let file = ULogFile.encode(records: records)
        let body = Array(file[ULogFile.headerSize...])
        XCTAssertEqual(try fromFile(body, prefix: Array(file.prefix(ULogFile.headerSize)), ULogRecordDecoder()), records)
        XCTAssertEqual(try fromSocket(body, ULogRecordDecoder()), records)
        XCTAssertEqual(try ULogFile.parse(file).records, records)
    }

    func testULogDamageIsTheSameErrorFromAFileAndASocket() throws {
        var body = records.flatMap { $0.encoded() }
        let end = records[0].encoded().count - 1
        body[end] = 0x42
        let expected = DecodeError.badMagic(0x42, expected: "record end 0xA2", offset: end)
        XCTAssertThrowsError(try fromSocket(body, ULogRecordDecoder())) { XCTAssertEqual($0 as? DecodeError, expected) }
        XCTAssertThrowsError(try fromFile(body, prefix: ULogFile.Header(size: 0, timestamp: 0).encoded(), ULogRecordDecoder())) {
            XCTAssertEqual($0 as? DecodeError, expected.shifted(by: ULogFile.headerSize))
        }
    }

    func testAFileWithoutAWholeFrameWithinTheBufferLimitIsRefused() throws {
        // The decoder alone would wait for more: NIO's maximum buffer size bounds it.
        var w = ByteWriter()
        w.writeU8(KTBinaryMagic.replication)
        w.writeU64(1)
        w.writeU32(100)
        let bytes = ReplicationFrame.accepted.encoded() + w.bytes + [UInt8](repeating: 0, count: 60)
        XCTAssertThrowsError(try fromFile(bytes, ReplicationFrameDecoder(), maximumBufferSize: 32)) { error in
            XCTAssertEqual((error as? DecodeError)?.kind, .tooLarge)
            XCTAssertEqual((error as? DecodeError)?.offset, 1)
        }
        XCTAssertThrowsError(try fromSocket(bytes, ReplicationFrameDecoder(), maximumBufferSize: 32)) { error in
            XCTAssertTrue(error is ByteToMessageDecoderError.PayloadTooLargeError, "\(error)")
        }
    }
}
