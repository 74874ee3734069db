import NIOCore
import QSBytes
import QSWire
import XCTest

/// `SnapshotStreamDecoder` reads the same stream as `FrameDecoder`, but passes snapshot
/// chunks' payloads on as they arrive; `EncodedSnapshotChunk` writes the bytes
/// `FrameEncoder` writes for a chunk.
final class SnapshotStreamDecoderTests: XCTestCase {
    func framed(_ f: Frame) -> ByteBuffer {
        var b = ByteBuffer()
        try? FrameEncoder().encode(data: f, out: &b)
        return b
    }

    func chunk(_ payload: [UInt8]) -> EncodedSnapshotChunk {
        var c = EncodedSnapshotChunk(capacity: payload.count)
        // Filled in two appends, as a pipe's reads would.
        let half = payload.count / 2
        for part in [payload[..<half], payload[half...]] {
            c.appendPayload(upTo: part.count + 10) { p in
                p.copyBytes(from: part)
                return part.count
            }
        }
        return c
    }

    /// Decodes `bytes` delivered in pieces of `piece` bytes: the whole frames, and the
    /// chunks' bytes joined.
    func decode(_ bytes: [UInt8], piece: Int, maxFrameBytes: Int = 1024) throws -> (frames: [Frame], chunks: [UInt8]) {
        var frames = [Frame](), chunks = [UInt8]()
        let processor = NIOSingleStepByteToMessageProcessor(SnapshotStreamDecoder(maxFrameBytes: maxFrameBytes))
        let take: (SnapshotStreamPart) -> Void = { part in
            switch part {
            case let .frame(f): frames.append(f)
            case let .chunkBytes(b):
                XCTAssertLessThanOrEqual(b.readableBytes, piece, "a part is bytes that arrived, not a whole chunk gathered")
                chunks += b.readableBytesView
            }
        }
        var offset = 0
        while offset < bytes.count {
            let end = min(bytes.count, offset + piece)
            try processor.process(buffer: ByteBuffer(bytes: bytes[offset..<end]), take)
            offset = end
        }
        try processor.finishProcessing(seenEOF: true, take)
        return (frames, chunks)
    }

    func testChunkPayloadsPassOnAsTheyArriveInAnySplitAndOtherFramesWhole() throws {
        let start = Response.snapshotStart(index: 3, hash: [UInt8](repeating: 1, count: 32), size: 700, offset: 0).frame()
        let done = Response.snapshotDone(digest: [UInt8](repeating: 2, count: 16)).frame()
        let payloads: [[UInt8]] = [(0..<200).map { UInt8($0) }, [], [UInt8](repeating: 7, count: 500)]
        var stream = framed(start)
        for p in payloads {
            let c = chunk(p)
            XCTAssertEqual(c.payloadCount, p.count)
            XCTAssertEqual(c.frame, framed(Response.snapshotChunk(p).frame()), "the bytes FrameEncoder writes for the chunk")
            XCTAssertEqual(c.withPayload { Array($0) }, p)
            stream.writeImmutableBuffer(c.frame)
        }
        stream.writeImmutableBuffer(framed(done))
        let bytes = Array(stream.readableBytesView)
        for piece in [1, 2, 3, 4, 5, 6, 7, 64, 333, bytes.count] {
            let (frames, chunks) = try decode(bytes, piece: piece)
            XCTAssertEqual(frames, [start, done], "in pieces of \(piece)")
            XCTAssertEqual(chunks, payloads.flatMap { $0 }, "in pieces of \(piece)")
        }
    }

    func testAChunkOverTheLimitIsRefusedFromItsHeaderAndAStreamEndingInsideOneIsTruncated() throws {
        XCTAssertThrowsError(try decode([0, 0, 4, 1, 0x8A], piece: 5)) { error in
            XCTAssertEqual(error as? DecodeError, DecodeError(offset: 0, reason: "frame of 1025 bytes exceeds the limit of 1024 bytes", kind: .tooLarge))
        }
        XCTAssertThrowsError(try decode([0, 0, 4, 1], piece: 4), "refused from its length alone, as any frame")
        let start = framed(Response.snapshotBegin(index: 1, hash: [UInt8](repeating: 1, count: 32), size: 99).frame())
        var cut = start
        cut.writeBytes([0, 0, 0, 100, 0x8A] + [UInt8](repeating: 5, count: 10))
        for piece in [1, 7, cut.readableBytes] {
            XCTAssertThrowsError(try decode(Array(cut.readableBytesView), piece: piece)) { error in
                XCTAssertEqual(error as? DecodeError, .endsInside("frame", offset: start.readableBytes, present: 15))
            }
        }
    }
}
