import QSBytes
import QSModel
import QSWire
import XCTest

/// A replica applies its upstream's entries from the frame's bytes (`PackedEntries`) where
/// the rest of the code decodes them (`Response.decode` into `[StoredEntry]`): both must
/// accept the same frames with the same errors and read the same entries, and an upstream's
/// frame written from a packed list must be the frame the decoded list encodes to.
final class PackedEntriesTests: XCTestCase {
    func randomEntries(_ rng: inout SplitMix64) -> [StoredEntry] {
        let first = UInt64.random(in: 1...1_000_000, using: &rng)
        return (0..<Int.random(in: 0...8, using: &rng)).map { i in
            let ops: [Mutation] = (0..<Int.random(in: 0...4, using: &rng)).map { j in
                .set(key: Array("k\(i).\(j)".utf8), value: (0..<Int.random(in: 0...200, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) },
                     expiry: Bool.random(using: &rng) ? nil : UInt64.random(in: 1...UInt64.max, using: &rng))
            }
            let entry = LogEntry(commitTimeNs: UInt64(i), origin: Origin(sourceID: "s\(i % 3)", position: UInt64(i)), operations: ops,
                                 copyCursor: i % 4 == 3 ? [9, 9] : nil)
            return StoredEntry(index: first + UInt64(i), hash: (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }, bytes: entry.encoded())
        }
    }

    func testPackedListsAreTheDecodedListsAndTheirFrames() throws {
        let seed = UInt64.random(in: 1...UInt64.max)
        var rng = SplitMix64(seed: seed)
        for round in 0..<300 {
            let list = randomEntries(&rng)
            let packed = PackedEntries(list)
            XCTAssertEqual(packed.count, list.count)
            XCTAssertEqual(packed.entries, list, "seed \(seed), round \(round)")
            let frame = Response.entries(list).frame()
            XCTAssertEqual(Response.entriesFrame(packed), frame, "seed \(seed), round \(round)")
            let read = try XCTUnwrap(try Response.packedEntries(frame))
            XCTAssertEqual(read, packed)
            // Each entry seen in the frame decodes as the entry copied out of it.
            var i = 0
            try read.forEach { index, hash, bytes in
                XCTAssertEqual(index, list[i].index)
                XCTAssertEqual(Array(hash), list[i].hash)
                XCTAssertEqual(Array(bytes), list[i].bytes)
                let inPlace = try LogEntry.decodePacked(bytes), copied = try LogEntry.decodePacked(list[i].bytes)
                XCTAssertEqual(inPlace.operations.mutations, copied.operations.mutations)
                XCTAssertEqual(inPlace.origin, copied.origin)
                XCTAssertEqual(inPlace.copyCursor, copied.copyCursor)
                XCTAssertEqual(inPlace.commitTimeNs, copied.commitTimeNs)
                i += 1
            }
            XCTAssertEqual(i, list.count)
        }
        XCTAssertNil(try Response.packedEntries(Response.heartbeat(head: 1, rootTimeNs: 2).frame()))
    }

    /// The list as the protocol defines it, read entry by entry with `ByteReader`'s own
    /// checks (the decoder `Response.decode` had before it read through `PackedEntries`).
    static func referenceDecode(_ payload: [UInt8]) throws -> [StoredEntry] {
        var r = ByteReader(payload)
        let list = try r.readList("entry", minimumBytesEach: 44) {
            StoredEntry(index: try $0.readU64("index"), hash: try $0.readBytes(32, "hash"), bytes: try $0.readBlob32("entry"))
        }
        try r.expectEnd("response")
        return list
    }

    /// Cut, corrupted and hostile `entries` payloads: the packed reader (and `Response.decode`,
    /// which reads through it) refuses exactly what the reference decoder refuses, with the
    /// same error, and reads the same entries when it accepts.
    func testTheReaderAcceptsAndRefusesExactlyWhatTheDecoderDoes() {
        let seed = UInt64.random(in: 1...UInt64.max)
        var rng = SplitMix64(seed: seed)
        let type = Response.entries([]).frame().type
        var refused = 0
        for round in 0..<3_000 {
            var bytes = Response.entries(randomEntries(&rng)).frame().payload
            switch round % 4 {
            case 0: bytes = Array(bytes.prefix(Int.random(in: 0...bytes.count, using: &rng)))
            case 1:
                // Mostly in the count and the first entry's header, where the checks are.
                for _ in 0..<Int.random(in: 1...3, using: &rng) where !bytes.isEmpty {
                    bytes[Int.random(in: 0..<min(bytes.count, 64), using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                }
            case 2: bytes = (0..<Int.random(in: 0...120, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            default: bytes += Bool.random(using: &rng) ? [0] : []
            }
            let frame = Frame(type: type, payload: bytes)
            let decoded = Result { try Self.referenceDecode(bytes) }
            let packed = Result { try Response.packedEntries(frame) }
            XCTAssertEqual("\(Result { try Response.decode(frame) })", "\(decoded.map { Response.entries($0) })", "seed \(seed), round \(round)")
            switch (decoded, packed) {
            case let (.success(list), .success(p?)):
                XCTAssertEqual(p.entries, list, "seed \(seed), round \(round)")
            case let (.failure(e1), .failure(e2)):
                XCTAssertEqual("\(e1)", "\(e2)", "seed \(seed), round \(round)")
                refused += 1
            default:
                XCTFail("seed \(seed), round \(round): decoder \(decoded), packed reader \(packed)")
            }
        }
        XCTAssertGreaterThan(refused, 700)
    }

    /// An entry's operations read from a slice of a larger buffer: the same operations, and
    /// the same errors at the same offsets (from the entry's first byte) as from its own array.
    func testAnEntryInASliceDecodesAsTheEntryInAnArray() {
        let seed = UInt64.random(in: 1...UInt64.max)
        var rng = SplitMix64(seed: seed)
        for round in 0..<2_000 {
            var bytes = randomEntries(&rng).first?.bytes ?? [LogEntry.version]
            if round % 2 == 0, !bytes.isEmpty {
                bytes[Int.random(in: 0..<bytes.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
            let buffer = [0xEE, 0xEE, 0xEE] + bytes + [0xEE]
            let slice = buffer[3..<(3 + bytes.count)]
            switch (Result { try LogEntry.decodePacked(bytes) }, Result { try LogEntry.decodePacked(slice) }) {
            case let (.success(a), .success(b)):
                XCTAssertEqual(a.operations.mutations, b.operations.mutations, "seed \(seed), round \(round)")
                XCTAssertEqual(a.origin, b.origin)
            case let (.failure(e1), .failure(e2)):
                XCTAssertEqual("\(e1)", "\(e2)", "seed \(seed), round \(round)")
            case let (a, b):
                XCTFail("seed \(seed), round \(round): array \(a), slice \(b)")
            }
        }
    }
}
