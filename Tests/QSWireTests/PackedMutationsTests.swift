import QSBytes
import QSModel
import XCTest

/// A root applies a batch from its bytes (`PackedMutations`) where the rest of the code
/// decodes it (`Mutation.decodeList`): both must accept the same bytes with the same errors,
/// read the same operations, and a kept subset must be the bytes the decoded subset encodes
/// to (the log entry holds them, hashed and replicated verbatim).
final class PackedMutationsTests: XCTestCase {
    func randomOperations(_ rng: inout SplitMix64) -> [Mutation] {
        func bytes(_ max: Int) -> [UInt8] {
            (0..<Int.random(in: 0...max, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        }
        return (0..<Int.random(in: 0...12, using: &rng)).map { _ in
            switch Int.random(in: 0..<5, using: &rng) {
            case 0: return .delete(key: bytes(20))
            case 1: return .clearPrefix(bytes(5))
            case 2: return .set(key: bytes(20), value: bytes(40), expiry: UInt64.random(in: 0...UInt64.max, using: &rng))
            default: return .set(key: bytes(20), value: bytes(300), expiry: nil)
            }
        }
    }

    func testEncodingDecodingAndViewsAgreeWithTheDecodedList() throws {
        let seed = UInt64.random(in: 1...UInt64.max)
        var rng = SplitMix64(seed: seed)
        for round in 0..<500 {
            let ops = randomOperations(&rng)
            let packed = PackedMutations(ops)
            var w = ByteWriter()
            Mutation.encodeList(ops, into: &w)
            XCTAssertEqual(Array(packed.bytes), w.bytes, "seed \(seed), round \(round)")
            XCTAssertEqual(packed.count, ops.count)
            XCTAssertEqual(packed.mutations, ops, "seed \(seed), round \(round)")

            // Read back from the middle of a frame: the same list, sharing the frame's bytes.
            let frame = [0xAA, 0xBB] + w.bytes + [0xCC]
            var r = ByteReader(frame)
            _ = try r.readU8()
            _ = try r.readU8()
            let read = try PackedMutations.read(from: &r)
            XCTAssertEqual(read, packed)
            XCTAssertEqual(r.remaining, 1)

            // Each view's range holds exactly that operation's encoding; a subset of runs is
            // what the subset of operations encodes to.
            var ranges = [Range<Int>]()
            var i = 0
            read.forEach { view in
                XCTAssertEqual(view.mutation, ops[i], "seed \(seed), round \(round), operation \(i)")
                var one = ByteWriter()
                ops[i].encode(into: &one)
                XCTAssertEqual(Array(read.bytes[(read.bytes.startIndex + view.range.lowerBound)...].prefix(view.range.count)), one.bytes)
                ranges.append(view.range)
                i += 1
            }
            XCTAssertEqual(i, ops.count)
            let keep = ops.indices.filter { _ in Bool.random(using: &rng) }
            // Adjacent operations joined into runs, as the store joins them.
            var runs = [Range<Int>]()
            for k in keep {
                if let last = runs.last, last.upperBound == ranges[k].lowerBound {
                    runs[runs.count - 1] = last.lowerBound..<ranges[k].upperBound
                } else {
                    runs.append(ranges[k])
                }
            }
            let subset = read.selecting(runs, count: keep.count)
            XCTAssertEqual(subset, PackedMutations(keep.map { ops[$0] }), "seed \(seed), round \(round), kept \(keep)")

            // A log entry of the packed list is the entry of the decoded one.
            let origin = Origin(sourceID: "s", position: UInt64(round))
            let entry = LogEntry(commitTimeNs: 5, origin: origin, operations: ops, copyCursor: round % 2 == 0 ? nil : [1, 2])
            let bytes = [UInt8](encodedCount: LogEntry.encodedCount(origin: origin, operations: read, copyCursor: entry.copyCursor)) {
                LogEntry.encode(commitTimeNs: 5, origin: origin, operations: read, copyCursor: entry.copyCursor, into: &$0)
            }
            XCTAssertEqual(bytes, entry.encoded())
        }
    }

    /// Cut, corrupted and hostile lists: the packed reader refuses exactly what the decoder
    /// refuses, with the same error, and stops at the same byte when it accepts.
    func testTheReaderAcceptsAndRefusesExactlyWhatTheDecoderDoes() {
        let seed = UInt64.random(in: 1...UInt64.max)
        var rng = SplitMix64(seed: seed)
        var refused = 0
        for round in 0..<5_000 {
            var w = ByteWriter()
            Mutation.encodeList(randomOperations(&rng), into: &w)
            var bytes = w.bytes
            switch round % 4 {
            case 0: bytes = Array(bytes.prefix(Int.random(in: 0...bytes.count, using: &rng)))
            case 1:
                for _ in 0..<Int.random(in: 1...3, using: &rng) where !bytes.isEmpty {
                    bytes[Int.random(in: 0..<bytes.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                }
            case 2: bytes = (0..<Int.random(in: 0...40, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            default: break
            }
            var a = ByteReader(bytes), b = ByteReader(bytes)
            let decoded = Result { try Mutation.decodeList(from: &a) }
            let packed = Result { try PackedMutations.read(from: &b) }
            switch (decoded, packed) {
            case let (.success(ops), .success(p)):
                XCTAssertEqual(p.mutations, ops, "seed \(seed), round \(round)")
                XCTAssertEqual(a.index, b.index, "seed \(seed), round \(round)")
            case let (.failure(e1), .failure(e2)):
                XCTAssertEqual("\(e1)", "\(e2)", "seed \(seed), round \(round)")
                refused += 1
            default:
                XCTFail("seed \(seed), round \(round): decoder \(decoded), packed reader \(packed)")
            }
        }
        XCTAssertGreaterThan(refused, 1_000)
    }
}

/// `readBytes` and `readString16` copy from contiguous storage: offsets must hold for a
/// slice that does not start at 0, and a string that is not UTF-8 is refused where it starts.
final class ByteReaderStringTests: XCTestCase {
    func testStringsAndBytesFromASliceThatDoesNotStartAtZero() throws {
        let text = Array("héllo, kt:1978".utf8)
        let whole: [UInt8] = [9, 9, 9] + [0, UInt8(text.count)] + text + [0, 0, 0, 2, 0xAB, 0xCD]
        for bytes in [whole, Array(whole[3...])] {
            let slice = bytes[(bytes.count - text.count - 8)...]
            var r = ByteReader(slice, base: 100)
            XCTAssertEqual(try r.readString16("source id"), "héllo, kt:1978")
            XCTAssertEqual(try r.readBlob32("value"), [0xAB, 0xCD])
            XCTAssertTrue(r.isAtEnd)
        }
    }

    func testInvalidUTF8IsRefusedAtItsOffset() {
        let bad: [UInt8] = [7] + [0, 3, 0x61, 0xC3, 0x28]
        var r = ByteReader(bad[1...], base: 10)
        XCTAssertThrowsError(try r.readString16("source id")) { error in
            XCTAssertEqual("\(error)", "source id is not valid UTF-8 at byte offset 12")
        }
        var cut = ByteReader([0, 5, 0x61, 0x62])
        XCTAssertThrowsError(try cut.readString16("source id")) { error in
            XCTAssertEqual("\(error)", "truncated source id: need 5 bytes, have 2 at byte offset 2")
        }
    }
}
