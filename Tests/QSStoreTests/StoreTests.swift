import Foundation
import QSModel
import QSStore
import XCTest

final class StoreTests: XCTestCase {
    var dir: URL!
    var store: Store!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("store-\(UUID().uuidString)")
        store = try Store(directory: dir.path, mapSize: 64 << 20)
    }

    override func tearDownWithError() throws {
        store = nil
        try? FileManager.default.removeItem(at: dir)
    }

    func set(_ k: String, _ v: String, _ x: UInt64? = nil) -> Mutation {
        .set(key: Array(k.utf8), value: Array(v.utf8), expiry: x)
    }

    func testBatchAppliesAndStoresCheckpointAndOneLogEntry() throws {
        let r = try store.applyBatch(sourceID: "kt:a", expected: 0, new: 100, operations: [set("a", "1"), set("b", "2")], now: 5)
        XCTAssertEqual(r, .applied(logIndex: 1, kept: 2, dropped: 0))
        XCTAssertEqual(try store.checkpoint(sourceID: "kt:a"), 100)
        XCTAssertEqual(try store.get(Array("a".utf8)), Record(value: Array("1".utf8), expiry: nil))
        let head = try store.head()
        XCTAssertEqual(head.index, 1)
        XCTAssertEqual(head.commitTimeNs, 5)
        let entries = try store.entries(from: 1, count: 10)
        XCTAssertEqual(entries.count, 1)
        let entry = try LogEntry.decode(entries[0].bytes)
        XCTAssertEqual(entry.origin, Origin(sourceID: "kt:a", position: 100))
        XCTAssertEqual(entry.operations, [set("a", "1"), set("b", "2")])
        XCTAssertEqual(entries[0].hash, ChainHash.next(previous: Head.empty.hash, entry: entries[0].bytes))
        XCTAssertEqual(head.hash, entries[0].hash)
    }

    func testConflictReturnsCurrentPositionAndChangesNothing() throws {
        _ = try store.applyBatch(sourceID: "s", expected: 0, new: 10, operations: [set("a", "1")])
        let r = try store.applyBatch(sourceID: "s", expected: 5, new: 20, operations: [set("a", "2")])
        XCTAssertEqual(r, .conflict(current: 10))
        XCTAssertEqual(try store.get(Array("a".utf8))?.value, Array("1".utf8))
        XCTAssertEqual(try store.head().index, 1)
        XCTAssertEqual(try store.checkpoint(sourceID: "s"), 10)
        // A replay of the applied batch (same expected) conflicts too: exactly once.
        XCTAssertEqual(try store.applyBatch(sourceID: "s", expected: 0, new: 10, operations: [set("a", "1")]), .conflict(current: 10))
    }

    func testSourcesHaveIndependentCheckpoints() throws {
        XCTAssertEqual(try store.applyBatch(sourceID: "x", expected: 0, new: 1, operations: [set("a", "1")]), .applied(logIndex: 1, kept: 1, dropped: 0))
        XCTAssertEqual(try store.applyBatch(sourceID: "y", expected: 0, new: 7, operations: [set("b", "1")]), .applied(logIndex: 2, kept: 1, dropped: 0))
        XCTAssertEqual(try store.checkpoints(), ["x": 1, "y": 7])
    }

    func testIdenticalWritesDroppedAndNoEntryWhenNothingLeft() throws {
        _ = try store.applyBatch(sourceID: "s", expected: 0, new: 1, operations: [set("a", "1", 50)])
        let r = try store.applyBatch(sourceID: "s", expected: 1, new: 2,
                                     operations: [set("a", "1", 50), .delete(key: Array("missing".utf8)), .clearPrefix(Array("zz".utf8))])
        XCTAssertEqual(r, .applied(logIndex: nil, kept: 0, dropped: 3))
        XCTAssertEqual(try store.head().index, 1)
        XCTAssertEqual(try store.checkpoint(sourceID: "s"), 2, "the position is consumed even when nothing changed")
        // Same value, different expiry is a change.
        let r2 = try store.applyBatch(sourceID: "s", expected: 2, new: 3, operations: [set("a", "1", 60), set("a", "1", 60)])
        XCTAssertEqual(r2, .applied(logIndex: 2, kept: 1, dropped: 1))
    }

    func testNewPositionMustExceedExpected() throws {
        XCTAssertThrowsError(try store.applyBatch(sourceID: "s", expected: 5, new: 5, operations: [])) { error in
            XCTAssertEqual(error as? StoreError, .invalidPositions(expected: 5, new: 5))
        }
        XCTAssertThrowsError(try store.applyBatch(sourceID: "", expected: 0, new: 1, operations: []))
    }

    func testClearPrefixRemovesOnlyMatchingKeys() throws {
        var ops = [Mutation]()
        for i in 0..<5000 { ops.append(set("aux/\(i)", "v")) }
        ops.append(set("aux", "kept"))
        ops.append(set("b", "kept"))
        _ = try store.applyBatch(sourceID: "s", expected: 0, new: 1, operations: ops)
        let r = try store.applyBatch(sourceID: "s", expected: 1, new: 2, operations: [.clearPrefix(Array("aux/".utf8))])
        XCTAssertEqual(r, .applied(logIndex: 2, kept: 1, dropped: 0))
        XCTAssertEqual(try store.recordCount(), 2)
        XCTAssertNotNil(try store.get(Array("aux".utf8)))
    }

    func testLongKeysAreStoredWholeAndDistinct() throws {
        XCTAssertEqual(store.environment.maxKeySize, 511)
        let base = [UInt8](repeating: 0x61, count: 600)
        var k1 = base; k1[599] = 1
        var k2 = base; k2[599] = 2
        let k3 = [UInt8](repeating: 0x62, count: 100_000)
        let boundary = [477, 478, 479, 510, 511, 512].map { [UInt8](repeating: 0x63, count: $0) }
        var ops: [Mutation] = [.set(key: k1, value: [1], expiry: nil), .set(key: k2, value: [2], expiry: nil),
                                        .set(key: k3, value: [3], expiry: 9), .set(key: [], value: [4], expiry: nil)]
        for (i, k) in boundary.enumerated() { ops.append(.set(key: k, value: [UInt8(10 + i)], expiry: nil)) }
        _ = try store.applyBatch(sourceID: "s", expected: 0, new: 1, operations: ops)
        XCTAssertEqual(try store.get(k1)?.value, [1])
        XCTAssertEqual(try store.get(k2)?.value, [2])
        XCTAssertEqual(try store.get(k3), Record(value: [3], expiry: 9))
        XCTAssertEqual(try store.get([])?.value, [4])
        for (i, k) in boundary.enumerated() { XCTAssertEqual(try store.get(k)?.value, [UInt8(10 + i)], "key of \(k.count) bytes") }
        XCTAssertNil(try store.get(Array(base[0..<599])))
        let all = try store.scan(limit: 100, now: nil).records
        XCTAssertEqual(Set(all.map(\.key)), Set([k1, k2, k3, []] + boundary))
        // A prefix longer than the stored prefix still selects exactly.
        let page = try store.scan(prefix: Array(base[0..<599]) + [2], limit: 100, now: nil)
        XCTAssertEqual(page.records.map(\.key), [k2])
        // Identical long-key writes are dropped; deletes hit the right key.
        XCTAssertEqual(try store.applyBatch(sourceID: "s", expected: 1, new: 2, operations: [.set(key: k1, value: [1], expiry: nil), .delete(key: k2)]),
                       .applied(logIndex: 2, kept: 1, dropped: 1))
        XCTAssertNil(try store.get(k2))
        XCTAssertEqual(try store.get(k1)?.value, [1])
    }

    func testScanPagesHideExpiredAndCoverEverything() throws {
        var ops = [Mutation]()
        for i in 0..<2500 { ops.append(set(String(format: "k%05d", i), "v\(i)", i % 10 == 0 ? 100 : nil)) }
        _ = try store.applyBatch(sourceID: "s", expected: 0, new: 1, operations: ops)
        var seen = [[UInt8]]()
        var cursor: [UInt8]?
        repeat {
            let page = try store.scan(after: cursor, limit: 333, now: 100)
            XCTAssertLessThanOrEqual(page.records.count, 333)
            seen += page.records.map(\.key)
            cursor = page.next
        } while cursor != nil
        XCTAssertEqual(seen.count, 2250)
        XCTAssertEqual(seen, seen.sorted { $0.lexicographicallyPrecedes($1) })
        XCTAssertEqual(try store.scan(limit: 5000, now: 99).records.count, 2500, "not yet expired at 99")
    }

    func testChainVerifiesAndSurvivesReopen() throws {
        for i in 0..<50 {
            _ = try store.applyBatch(sourceID: "s", expected: UInt64(i), new: UInt64(i + 1), operations: [set("k\(i % 7)", "v\(i)")])
        }
        XCTAssertEqual(try store.verifyChain(), 50)
        let head = try store.head()
        let id = try store.identity()
        store = nil
        store = try Store(directory: dir.path, mapSize: 64 << 20)
        XCTAssertEqual(try store.head(), head)
        XCTAssertEqual(try store.identity(), id)
        XCTAssertEqual(try store.verifyChain(), 50)
        XCTAssertEqual(try store.checkpoint(sourceID: "s"), 50)
    }

    func testAnEmptyStoreVerifiesAndReplicatesItsEmptiness() throws {
        XCTAssertEqual(try store.verifyChain(), 0)
        let snap = dir.appendingPathComponent("snap")
        try FileManager.default.createDirectory(at: snap, withIntermediateDirectories: true)
        XCTAssertEqual(try store.snapshot(into: snap.path), Head.empty)
        let copy = try Store(directory: snap.path, readOnly: true)
        XCTAssertEqual(try copy.verifyChain(), 0)
    }

    func testAppendEntriesContinuesTheChainOrRefuses() throws {
        let other = try Store(directory: dir.appendingPathComponent("other").path, mapSize: 64 << 20)
        for i in 0..<5 {
            _ = try store.applyBatch(sourceID: "s", expected: UInt64(i), new: UInt64(i + 1), operations: [set("k\(i)", "v")])
        }
        let entries = try store.entries(from: 1, count: 10)
        XCTAssertThrowsError(try other.appendEntries(Array(entries[1...]))) { XCTAssertEqual($0 as? AppendError, .notNext(head: 0, got: 2)) }
        var forged = entries
        forged[2].bytes[forged[2].bytes.count - 1] ^= 1
        XCTAssertThrowsError(try other.appendEntries(forged)) { XCTAssertEqual($0 as? AppendError, .diverged(index: 3)) }
        XCTAssertEqual(try other.head(), Head.empty, "nothing written when any entry fails")
        XCTAssertEqual(try other.appendEntries(entries), try store.head())
        XCTAssertEqual(try other.checkpoint(sourceID: "s"), 5)
        XCTAssertEqual(try other.scan(limit: 10, now: nil).records.count, 5)
        // Trimming keeps the chain verifiable from the retained window.
        XCTAssertEqual(try other.trimLog(retain: 2), 3)
        XCTAssertEqual(try other.logWindow().firstIndex, 4)
        XCTAssertEqual(try other.verifyChain(), 2)
        XCTAssertEqual(try other.hash(at: 3), entries[2].hash)
        XCTAssertNil(try other.hash(at: 2))
    }

    func testMapFullIsAnErrorAndNothingIsWritten() throws {
        let small = dir.appendingPathComponent("small")
        let s = try Store(directory: small.path, mapSize: 1 << 20)
        let big = [UInt8](repeating: 7, count: 400_000)
        _ = try s.applyBatch(sourceID: "s", expected: 0, new: 1, operations: [.set(key: [1], value: big, expiry: nil)])
        XCTAssertThrowsError(try s.applyBatch(sourceID: "s", expected: 1, new: 2,
                                              operations: (2..<8).map { .set(key: [UInt8($0)], value: big, expiry: nil) })) { error in
            XCTAssertTrue((error as? LMDBError)?.isMapFull ?? false, "\(error)")
        }
        XCTAssertEqual(try s.checkpoint(sourceID: "s"), 1)
        XCTAssertEqual(try s.head().index, 1)
        XCTAssertEqual(try s.verifyChain(), 1)
    }

    func testLogEntryCodecRejectsGarbage() {
        let e = LogEntry(commitTimeNs: 1, origin: Origin(sourceID: "s", position: 2), operations: [set("a", "b", 3), .delete(key: [1]), .clearPrefix([])])
        XCTAssertEqual(try LogEntry.decode(e.encoded()), e)
        var bytes = e.encoded()
        bytes.append(0)
        XCTAssertThrowsError(try LogEntry.decode(bytes))
        XCTAssertThrowsError(try LogEntry.decode(Array(e.encoded().dropLast())))
        XCTAssertThrowsError(try LogEntry.decode([1, 0, 0]))
    }
}
