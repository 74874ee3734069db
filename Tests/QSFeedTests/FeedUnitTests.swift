import KTFormats
import Logging
import QSFeed
import QSKTFeed
import QSModel
import XCTest

final class FeedUnitTests: XCTestCase {
    func k(_ s: String) -> [UInt8] { Array(s.utf8) }

    func testCoalesceKeepsTheLastWritePerKeyAndRespectsClears() {
        let ops: [Mutation] = [
            .set(key: k("a"), value: [1], expiry: nil), .set(key: k("b"), value: [1], expiry: nil),
            .set(key: k("a"), value: [2], expiry: 5), .delete(key: k("b")),
            .set(key: k("x/1"), value: [1], expiry: nil), .clearPrefix(k("x/")), .set(key: k("x/2"), value: [2], expiry: nil),
            .clearPrefix(k("x/y")),
        ]
        XCTAssertEqual(coalesce(ops), [
            .set(key: k("a"), value: [2], expiry: 5), .delete(key: k("b")), .clearPrefix(k("x/")),
            .set(key: k("x/2"), value: [2], expiry: nil), .clearPrefix(k("x/y")),
        ])
        XCTAssertEqual(coalesce([]), [])
    }

    /// Applying the coalesced batch leaves the same state as applying every operation.
    func testCoalesceIsEquivalentToApplyingInOrder() throws {
        var rng = SystemRandomNumberGenerator()
        let keys = ["a", "ab", "abc", "b", "ba", ""].map { k($0) }
        for round in 0..<200 {
            var ops = [Mutation]()
            for _ in 0..<Int.random(in: 1...12, using: &rng) {
                let key = keys.randomElement(using: &rng)!
                switch Int.random(in: 0..<5, using: &rng) {
                case 0: ops.append(.delete(key: key))
                case 1: ops.append(.clearPrefix(key))
                default: ops.append(.set(key: key, value: [UInt8(round % 256), UInt8.random(in: 0...3, using: &rng)], expiry: nil))
                }
            }
            XCTAssertEqual(apply(ops), apply(coalesce(ops)), "\(ops)")
        }
    }

    /// Thousands of distinct keys (of every length from 0 to 24 bytes, keys that differ
    /// in one byte) come back as they are; the same key written twice, however far apart,
    /// is merged.
    func testCoalesceFindsTheOneRepeatedKeyInALargeBatch() {
        var ops = [Mutation]()
        for i in 0..<5_000 {
            let key = [UInt8](repeating: 0x6B, count: i % 25) + withUnsafeBytes(of: UInt32(i).bigEndian, Array.init)
            ops.append(i % 7 == 0 ? .delete(key: key) : .set(key: key, value: [UInt8(i % 256)], expiry: nil))
        }
        ops.append(.set(key: [], value: [1], expiry: nil))
        XCTAssertEqual(coalesce(ops), ops)
        let again = Mutation.set(key: [UInt8](repeating: 0x6B, count: 17) + withUnsafeBytes(of: UInt32(17).bigEndian, Array.init),
                                 value: [9], expiry: 3)
        var expected = ops
        expected.remove(at: 17)
        XCTAssertEqual(coalesce(ops + [again]), expected + [again])
    }

    func apply(_ ops: [Mutation]) -> [[UInt8]: [UInt8]] {
        var state: [[UInt8]: [UInt8]] = [k("a"): [9], k("b"): [9], k("zz"): [9]]
        for op in ops {
            switch op {
            case let .set(key, value, _): state[key] = value
            case let .delete(key): state[key] = nil
            case let .clearPrefix(p): state = state.filter { !$0.key.starts(with: p) }
            }
        }
        return state
    }

    func testDBMapParsing() throws {
        XCTAssertEqual(try KTMapping.parseDBMap("0=,1=aux/"), [0: [], 1: k("aux/")])
        XCTAssertThrowsError(try KTMapping.parseDBMap("x=1"))
        XCTAssertThrowsError(try KTMapping.parseDBMap("0=a,0=b"))
        // The wrong separator would put every key under " 1=aux/".
        XCTAssertThrowsError(try KTMapping.parseDBMap("0= 1=aux/"))
        XCTAssertThrowsError(try KTMapping.parseDBMap("0=a\tb"))
        XCTAssertEqual(try KTMapping.parseDBMap("0=zone:,2=a/b.c-"), [0: k("zone:"), 2: k("a/b.c-")])
        XCTAssertThrowsError(try KTMapping.parseDBMap(""))
        XCTAssertNotNil(KTMapping(prefixes: [0: [], 1: k("aux/")], allowClear: true).clearConflict())
        XCTAssertNil(KTMapping(prefixes: [0: k("main/"), 1: k("aux/")], allowClear: true).clearConflict())
        XCTAssertNil(KTMapping(prefixes: [0: [], 1: k("aux/")], allowClear: false).clearConflict())
    }

    func testTranslatorCarriesExpiryPrefixesAndPolicies() throws {
        let logger = Logger(label: "test")
        let t = KTTranslator(mapping: KTMapping(prefixes: [0: [], 1: k("aux/")]), logger: logger)
        let ts: UInt64 = 1_795_560_696_183_000_001
        let set = KTUpdateMessage(sid: 7, db: 1, operation: .set(key: k("key"), value: k("v"), expiration: 1_800_000_000)).encoded()
        XCTAssertEqual(try t.change(timestamp: ts, message: set),
                       FeedChange(position: ts, operations: [.set(key: k("aux/key"), value: k("v"), expiry: 1_800_000_000)], sourceTimeNs: 1_795_560_696_183_000_000))
        let never = KTUpdateMessage(sid: 7, db: 0, operation: .set(key: k("key"), value: [], expiration: KTExpiration.never)).encoded()
        XCTAssertEqual(try t.change(timestamp: ts, message: never).operations, [.set(key: k("key"), value: [], expiry: nil)])
        let remove = KTUpdateMessage(sid: 7, db: 0, operation: .remove(key: k("gone"))).encoded()
        XCTAssertEqual(try t.change(timestamp: ts, message: remove).operations, [.delete(key: k("gone"))])
        // Unmapped database, clear without permission, garbage: stop by default.
        let unmapped = KTUpdateMessage(sid: 7, db: 2, operation: .remove(key: k("x"))).encoded()
        XCTAssertThrowsError(try t.change(timestamp: ts, message: unmapped)) { XCTAssertTrue("\($0)".contains("database 2")) }
        let clear = KTUpdateMessage(sid: 7, db: 1, operation: .clear).encoded()
        XCTAssertThrowsError(try t.change(timestamp: ts, message: clear)) { XCTAssertTrue("\($0)".contains("--allow-clear")) }
        XCTAssertThrowsError(try t.change(timestamp: ts, message: [0, 7, 0, 0, 0x77]))
        // Counting mode: a position without a change; clears allowed: a prefix clear.
        let lenient = KTTranslator(mapping: KTMapping(prefixes: [1: k("aux/")], onUnmapped: .count, onUndecodable: .count, allowClear: true), logger: logger)
        XCTAssertEqual(try lenient.change(timestamp: ts, message: unmapped).operations, [])
        XCTAssertEqual(try lenient.change(timestamp: ts, message: [0, 7, 0, 0, 0x77]).operations, [])
        XCTAssertEqual(try lenient.change(timestamp: ts, message: clear).operations, [.clearPrefix(k("aux/"))])
    }

    /// A change of one operation held inline is the change of that one-element list: same
    /// operations, counts and bytes, equal either way; replacing its operations recounts.
    func testOneOperationChangeIsTheOneElementListChange() {
        let op = Mutation.set(key: k("key"), value: k("value"), expiry: 9)
        var one = FeedChange(position: 5, operation: op, sourceTimeNs: 7)
        let list = FeedChange(position: 5, operations: [op], sourceTimeNs: 7)
        XCTAssertEqual(one, list)
        XCTAssertEqual(one.operations, [op])
        XCTAssertEqual(one.operationCount, 1)
        XCTAssertEqual(one.operationBytes, 8)
        XCTAssertEqual(one.payloadBytes, list.payloadBytes)
        XCTAssertNotEqual(one, FeedChange(position: 5, operation: .delete(key: k("key")), sourceTimeNs: 7))
        one.operations = [op, .delete(key: k("other"))]
        XCTAssertEqual(one.operationCount, 2)
        XCTAssertEqual(one.operationBytes, 13)
        XCTAssertEqual(one, FeedChange(position: 5, operations: [op, .delete(key: k("other"))], sourceTimeNs: 7))
    }
}
