import KTFormats
import NIOCore
import NIOEmbedded
import NIOTestUtils
import QSBytes
import XCTest

final class StreamFixtureTests: XCTestCase {
    static func frames(_ set: String) throws -> [ReplicationFrame] {
        var buffer = ByteBuffer(bytes: try Fixtures.bytes("\(set)/stream.bin"))
        var decoder = ReplicationFrameDecoder()
        var frames: [ReplicationFrame] = []
        while let f = try decoder.decode(buffer: &buffer) { frames.append(f) }
        XCTAssertEqual(buffer.readableBytes, 0)
        return frames
    }

    func testStreamUpdatesEqualULogRecords() throws {
        for set in ["basic", "medium"] {
            let frames = try Self.frames(set)
            XCTAssertEqual(frames.first, .accepted)
            var updates: [ULogFile.Record] = []
            for f in frames.dropFirst() {
                switch f {
                case .update(let ts, let m): updates.append(ULogFile.Record(timestamp: ts, message: m))
                case .heartbeat(let ts):
                    // A heartbeat never goes below the last timestamp sent before it.
                    XCTAssertGreaterThanOrEqual(ts, updates.last?.timestamp ?? 0)
                default: XCTFail("unexpected \(f)")
                }
            }
            let records = try Fixtures.ulogFiles(set).flatMap { try ULogFile.parse($0.bytes).records }
            XCTAssertEqual(updates, records, set)
        }
    }

    func testReplayingStreamGivesFinalState() throws {
        for set in ["basic", "medium"] {
            var messages: [(UInt64, KTUpdateMessage)] = []
            for case .update(let ts, let m) in try Self.frames(set) where !m.isEmpty {
                messages.append((ts, try KTUpdateMessage(decoding: m)))
            }
            let ordered = messages.sorted { $0.0 < $1.0 }.map(\.1)
            XCTAssertEqual(Fixtures.replay(ordered, now: try Fixtures.recordedAt(set)), try Fixtures.finalState(set), set)
        }
    }

    func testDecoderThroughEmbeddedChannel() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(ReplicationFrameDecoder()))
        let bytes = try Fixtures.bytes("basic/stream.bin")
        for chunk in stride(from: 0, to: bytes.count, by: 997) {
            try channel.writeInbound(ByteBuffer(bytes: bytes[chunk..<min(bytes.count, chunk + 997)]))
        }
        var count = 0
        while let _ = try channel.readInbound(as: ReplicationFrame.self) { count += 1 }
        XCTAssertEqual(count, try Self.frames("basic").count)
        XCTAssertTrue(try channel.finish().isClean)
    }

    func testVerifierSplitsReplicationFrames() throws {
        let frames: [ReplicationFrame] = [
            .update(timestamp: 1_795_560_695_831_000_000, message: KTUpdateMessage(sid: 7, db: 0, operation: .set(key: [1, 2], value: [3], expiration: KTExpiration.never)).encoded()),
            .heartbeat(timestamp: 1_795_560_695_832_000_000),
            .update(timestamp: 1_795_560_695_833_000_000, message: []),
        ]
        // The verifier feeds its inputs many times into one decoder, so it checks the
        // frames after the acceptance byte.
        var input = ByteBuffer()
        for f in frames { input.writeBytes(f.encoded()) }
        try ByteToMessageDecoderVerifier.verifyDecoder(
            inputOutputPairs: [(input, frames)],
            decoderFactory: { ReplicationFrameDecoder(expectAcceptance: false) })
        var refused = ByteBuffer(bytes: [KTBinaryMagic.error])
        var decoder = ReplicationFrameDecoder()
        XCTAssertEqual(try decoder.decode(buffer: &refused), .refused)
    }

    func testBadMagicCarriesStreamOffset() throws {
        var bytes = ReplicationFrame.accepted.encoded() + ReplicationFrame.heartbeat(timestamp: 5).encoded()
        bytes.append(0x77)
        var buffer = ByteBuffer(bytes: bytes)
        var decoder = ReplicationFrameDecoder()
        XCTAssertEqual(try decoder.decode(buffer: &buffer), .accepted)
        XCTAssertEqual(try decoder.decode(buffer: &buffer), .heartbeat(timestamp: 5))
        XCTAssertThrowsError(try decoder.decode(buffer: &buffer)) { error in
            XCTAssertEqual(error as? DecodeError, .badMagic(0x77, expected: "replication frame 0xB1 or 0xB0", offset: 10))
        }
    }

    func testReplicationRequestBytes() {
        XCTAssertEqual(ReplicationRequest(flags: 0, timestamp: 0x0102030405060708, sid: 99).encoded(),
                       [0xB1, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 99])
    }
}
