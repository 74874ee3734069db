import KTFormats
import NIOCore
import NIOTestUtils
import QSNet
@testable import QSReads
import XCTest

/// A read node's binary decoder (`KTBinaryReadDecoder`) and the key walk of its `get_bulk`
/// answers (`KTBinaryKeys`).
final class KTBinaryReadDecoderTests: XCTestCase {
    /// get_bulk requests (walked as they arrive, handed on whole as their keys' bytes)
    /// decode the same on every split of the input, several in a row included; their keys
    /// walk back to what was sent.
    func testGetBulkDecodesOnEverySplit() throws {
        let keys: [[KTBinaryKey]] = [
            [KTBinaryKey(db: 1, key: Array("key".utf8)), KTBinaryKey(db: 0, key: []), KTBinaryKey(db: 3, key: [7, 8, 9])],
            [],
            [KTBinaryKey(db: 0, key: Array("another".utf8))],
        ]
        let flags: [UInt32] = [0, 1, 0]
        var input = ByteBuffer()
        var expected: [KTBinaryRead] = []
        for (k, f) in zip(keys, flags) {
            let bytes = KTBinaryRequest.getBulk(flags: f, keys: k).encoded()
            input.writeBytes(bytes)
            expected.append(.getBulk(flags: f, count: UInt32(k.count), keys: ByteBuffer(bytes: bytes.dropFirst(9)), held: 0))
        }
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: [(input, expected)], decoderFactory: { KTBinaryReadDecoder() })
        for (k, read) in zip(keys, expected) {
            guard case let .getBulk(_, count, bytes, _) = read else { return XCTFail("not a get_bulk") }
            var walked: [KTBinaryKey] = []
            KTBinaryKeys(keys: bytes, count: count).forEachOnce { db, key in walked.append(KTBinaryKey(db: db, key: Array(key))) }
            XCTAssertEqual(walked, k)
        }
        // A key over KT's limit is refused from its size, before its bytes.
        var decoder = KTBinaryReadDecoder()
        var buffer = ByteBuffer(bytes: [0xBA, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF])
        XCTAssertThrowsError(try decoder.decode(buffer: &buffer))
        // A write is refused from its magic and flags.
        var write = ByteBuffer(bytes: [0xB8, 0, 0, 0, 0, 0, 0])
        XCTAssertEqual(try decoder.decode(buffer: &write), .refused(.setBulk(flags: 0, records: [])))
    }

    /// Each key once, in the order first named (a key named again in another database is
    /// another key), over many keys and repeats.
    func testKeysAreWalkedOnceEachInOrder() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<50 {
            let named = (0..<Int.random(in: 0...400, using: &rng)).map { _ in
                KTBinaryKey(db: UInt16.random(in: 0...2, using: &rng), key: Array("k\(Int.random(in: 0...60, using: &rng))".utf8).prefix(Int.random(in: 0...4, using: &rng)).map { $0 })
            }
            let bytes = KTBinaryRequest.getBulk(flags: 0, keys: named).encoded()
            var once: [KTBinaryKey] = [], seen = Set<KTBinaryKey>()
            for k in named where seen.insert(k).inserted { once.append(k) }
            var walked: [KTBinaryKey] = []
            KTBinaryKeys(keys: ByteBuffer(bytes: bytes.dropFirst(9)), count: UInt32(named.count)).forEachOnce { db, key in
                walked.append(KTBinaryKey(db: db, key: Array(key)))
            }
            XCTAssertEqual(walked, once)
        }
    }

    /// With a share of the port's budget: the bytes arriving are held as they come; a whole
    /// request holds its bytes and what answering it builds (`keyBytes` a key) until the
    /// session gives them back; one that could never fit, or that finds the budget full, is
    /// refused, the rest of the connection's bytes discarded.
    func testAWholeRequestHoldsItsAnswersBuildingUntilReleased() throws {
        let pending = PendingBytes(limit: 10_000)
        let share = KTBinaryShare(pending)
        var decoder = KTBinaryReadDecoder(share: share)
        let request = KTBinaryRequest.getBulk(flags: 0, keys: (0..<10).map { KTBinaryKey(db: 0, key: Array("key\($0)".utf8)) }).encoded()
        var buffer = ByteBuffer(bytes: request.prefix(30))
        XCTAssertNil(try decoder.decode(buffer: &buffer))
        XCTAssertEqual(pending.inUse, 30)
        buffer.writeBytes(request.dropFirst(30))
        guard case let .getBulk(_, count, _, held)? = try decoder.decode(buffer: &buffer) else { return XCTFail("not whole") }
        XCTAssertEqual(count, 10)
        XCTAssertEqual(held, request.count + 10 * KTBinaryReadDecoder.keyBytes)
        XCTAssertEqual(pending.inUse, held)
        share.release(held)
        XCTAssertEqual(pending.inUse, 0)

        // 200 keys: 2,000 bytes of keys, 9,600 of answering: could never fit in 10,000.
        let many = KTBinaryRequest.getBulk(flags: 0, keys: (0..<200).map { _ in KTBinaryKey(db: 0, key: Array("k".utf8)) }).encoded()
        var big = ByteBuffer(bytes: many + request)
        XCTAssertEqual(try decoder.decode(buffer: &big), .overBudget(bytes: many.count + 200 * KTBinaryReadDecoder.keyBytes, whole: true))
        XCTAssertEqual(big.readableBytes, 0, "the rest discarded")
        share.releaseAll()
        XCTAssertEqual(pending.inUse, 0)

        // The budget full now: refused, not whole.
        XCTAssertTrue(pending.reserve(9_900))
        var other = KTBinaryReadDecoder(share: KTBinaryShare(pending))
        var full = ByteBuffer(bytes: request)
        XCTAssertEqual(try other.decode(buffer: &full), .overBudget(bytes: request.count, whole: false))
    }

    /// A reply gathered value by value holds its bytes as it grows, once large: two gathered
    /// at once each see the other's (checked only, four reader threads each gathered up to
    /// the whole budget). Its first value is served alone whatever its size.
    func testGatheredRepliesHoldAsTheyGrow() {
        let memory = ReplyMemory(limit: 1 << 20)
        var a = GatheredReply(memory: memory, startingAt: 5), b = GatheredReply(memory: memory, startingAt: 5)
        XCTAssertTrue(a.add(1000))
        XCTAssertEqual(memory.inUse, 0, "small: not held")
        XCTAssertTrue(a.add(600_000))
        XCTAssertEqual(memory.inUse, 601_005)
        XCTAssertTrue(b.add(300_000))
        XCTAssertTrue(b.add(100_000))
        XCTAssertFalse(a.add(100_000), "past the budget with the other's bytes")
        XCTAssertEqual(memory.inUse, 1_001_010)
        a.release()
        b.release()
        XCTAssertEqual(memory.inUse, 0)
        var alone = GatheredReply(memory: memory)
        XCTAssertTrue(alone.add(4 << 20), "one value larger than the budget, nothing else held")
        XCTAssertFalse(alone.add(1), "but nothing more with it")
        alone.release()
        XCTAssertEqual(memory.inUse, 0)
    }
}
