import Foundation
import QSBytes
import QSModel
import QSStore
import XCTest

// Assertions over async expressions (XCTest's own take no `await`).
func equal<T: Equatable>(_ a: @autoclosure () async throws -> T, _ b: @autoclosure () throws -> T, _ message: String = "",
                         file: StaticString = #filePath, line: UInt = #line) async {
    do {
        let x = try await a()
        XCTAssertEqual(x, try b(), message, file: file, line: line)
    } catch {
        XCTFail("threw \(error) \(message)", file: file, line: line)
    }
}

func isNil<T>(_ a: @autoclosure () async throws -> T?, file: StaticString = #filePath, line: UInt = #line) async {
    do {
        let x = try await a()
        XCTAssertNil(x, file: file, line: line)
    } catch { XCTFail("threw \(error)", file: file, line: line) }
}

func isNotNil<T>(_ a: @autoclosure () async throws -> T?, file: StaticString = #filePath, line: UInt = #line) async {
    do {
        let x = try await a()
        XCTAssertNotNil(x, file: file, line: line)
    } catch { XCTFail("threw \(error)", file: file, line: line) }
}

func throwsError<T>(_ a: @autoclosure () async throws -> T, file: StaticString = #filePath, line: UInt = #line,
                    _ check: (any Error) -> Void = { _ in }) async {
    do {
        _ = try await a()
        XCTFail("no error thrown", file: file, line: line)
    } catch {
        check(error)
    }
}

/// Skips a test of something only LMDB has (its data file's bytes, its map) when the suite
/// runs on RocksDB (`QS_STORE_ENGINE=rocksdb`, scripts/swift-test.sh).
func onlyOnLMDB(_ what: String) throws {
    try XCTSkipIf(Store.defaultEngine != .lmdb, "LMDB only: \(what)")
}

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

    /// A directory that cannot be made is named with the system's reason, not as a
    /// Foundation error ("NSCocoaErrorDomain Code=4").
    func testADirectoryThatCannotBeMadeIsNamedWithTheReason() throws {
        let other = dir.appendingPathComponent("other").path
        XCTAssertThrowsError(try Store(directory: other, mapSize: 64 << 20, stagingDirectory: "/proc/qs-staging")) { error in
            XCTAssertTrue("\(error)".contains("the staging directory /proc/qs-staging cannot be created (mkdir /proc/qs-staging:"), "\(error)")
        }
        let file = dir.appendingPathComponent("a-file")
        XCTAssertTrue(FileManager.default.createFile(atPath: file.path, contents: Data()))
        XCTAssertThrowsError(try Store(directory: file.appendingPathComponent("data").path, mapSize: 64 << 20)) { error in
            XCTAssertTrue("\(error)".contains("Not a directory"), "\(error)")
        }
        XCTAssertThrowsError(try Store(directory: file.path, mapSize: 64 << 20)) { error in
            XCTAssertTrue("\(error)".contains("is a file, not a directory"), "\(error)")
        }
    }

    func testBatchAppliesAndStoresCheckpointAndOneLogEntry() async throws {
        let r = try await store.applyBatch(sourceID: "kt:a", expected: 0, new: 100, operations: [set("a", "1"), set("b", "2")], now: 5)
        XCTAssertEqual(r, .applied(logIndex: 1, kept: 2, dropped: 0))
        await equal(try await store.checkpoint(sourceID: "kt:a"), 100)
        await equal(try await store.get(Array("a".utf8)), Record(value: Array("1".utf8), expiry: nil))
        let head = try await store.head()
        XCTAssertEqual(head.index, 1)
        XCTAssertEqual(head.commitTimeNs, 5)
        let entries = try await store.entries(from: 1, count: 10)
        XCTAssertEqual(entries.count, 1)
        let entry = try LogEntry.decode(entries[0].bytes)
        XCTAssertEqual(entry.origin, Origin(sourceID: "kt:a", position: 100))
        XCTAssertEqual(entry.operations, [set("a", "1"), set("b", "2")])
        XCTAssertEqual(entries[0].hash, ChainHash.next(previous: Head.empty.hash, entry: entries[0].bytes))
        XCTAssertEqual(head.hash, entries[0].hash)
    }

    func testConflictReturnsCurrentPositionAndChangesNothing() async throws {
        _ = try await store.applyBatch(sourceID: "s", expected: 0, new: 10, operations: [set("a", "1")])
        let r = try await store.applyBatch(sourceID: "s", expected: 5, new: 20, operations: [set("a", "2")])
        XCTAssertEqual(r, .conflict(current: 10))
        await equal(try await store.get(Array("a".utf8))?.value, Array("1".utf8))
        await equal(try await store.head().index, 1)
        await equal(try await store.checkpoint(sourceID: "s"), 10)
        // A replay of the applied batch (same expected) conflicts too: exactly once.
        await equal(try await store.applyBatch(sourceID: "s", expected: 0, new: 10, operations: [set("a", "1")]), .conflict(current: 10))
    }

    func testSourcesHaveIndependentCheckpoints() async throws {
        await equal(try await store.applyBatch(sourceID: "x", expected: 0, new: 1, operations: [set("a", "1")]), .applied(logIndex: 1, kept: 1, dropped: 0))
        await equal(try await store.applyBatch(sourceID: "y", expected: 0, new: 7, operations: [set("b", "1")]), .applied(logIndex: 2, kept: 1, dropped: 0))
        await equal(try await store.checkpoints(), ["x": 1, "y": 7])
    }

    func testIdenticalWritesDroppedAndNoEntryWhenNothingLeft() async throws {
        _ = try await store.applyBatch(sourceID: "s", expected: 0, new: 1, operations: [set("a", "1", 50)])
        let r = try await store.applyBatch(sourceID: "s", expected: 1, new: 2,
                                     operations: [set("a", "1", 50), .delete(key: Array("missing".utf8)), .clearPrefix(Array("zz".utf8))])
        XCTAssertEqual(r, .applied(logIndex: nil, kept: 0, dropped: 3))
        await equal(try await store.head().index, 1)
        await equal(try await store.checkpoint(sourceID: "s"), 2, "the position is consumed even when nothing changed")
        // Same value, different expiry is a change.
        let r2 = try await store.applyBatch(sourceID: "s", expected: 2, new: 3, operations: [set("a", "1", 60), set("a", "1", 60)])
        XCTAssertEqual(r2, .applied(logIndex: 2, kept: 1, dropped: 1))
    }

    /// A batch applied from its bytes keeps the operations that change something and its log
    /// entry is exactly the entry of those, in order, whichever are dropped (the first, the
    /// last, runs in between): random batches over a few keys, short and past the stored
    /// prefix, with and without expiries, and prefix clears; seeded.
    func testTheEntryOfABatchWithDropsHoldsExactlyTheKeptOperations() async throws {
        let seed = UInt64.random(in: 1...UInt64.max)
        var rng = SplitMix64(seed: seed)
        var model = [[UInt8]: Record]()
        let long = String(repeating: "p", count: 490)
        for batch in 0..<80 {
            var ops = [Mutation](), kept = [Mutation]()
            for _ in 0..<Int.random(in: 1...12, using: &rng) {
                let n = Int.random(in: 0..<8, using: &rng)
                let k = Array((n < 2 ? "k\(n)\(long)\(Int.random(in: 0..<2, using: &rng))" : "k\(n)").utf8)
                let expiry: UInt64? = Bool.random(using: &rng) ? nil : 4_000_000_000 + UInt64(Int.random(in: 0..<2, using: &rng))
                let op: Mutation
                switch Int.random(in: 0..<8, using: &rng) {
                case 0: op = .delete(key: k)
                case 1: op = .clearPrefix(Array("k\(Int.random(in: 0..<8, using: &rng))".utf8))
                case 2: op = .set(key: k, value: model[k]?.value ?? [1], expiry: model[k]?.expiry) // identical when stored
                default: op = .set(key: k, value: [UInt8(Int.random(in: 0..<3, using: &rng))], expiry: expiry)
                }
                ops.append(op)
                switch op {
                case let .set(_, v, x) where model[k] != Record(value: v, expiry: x):
                    model[k] = Record(value: v, expiry: x)
                    kept.append(op)
                case .delete where model[k] != nil:
                    model[k] = nil
                    kept.append(op)
                case let .clearPrefix(p) where model.keys.contains { $0.starts(with: p) }:
                    for key in model.keys where key.starts(with: p) { model[key] = nil }
                    kept.append(op)
                default: break
                }
            }
            let before = try await store.head()
            let r = try await store.applyBatch(sourceID: "s", expected: UInt64(batch), new: UInt64(batch + 1), operations: ops)
            guard case let .applied(index, k, dropped) = r else { return XCTFail("seed \(seed), batch \(batch): \(r)") }
            XCTAssertEqual([k, dropped], [kept.count, ops.count - kept.count], "seed \(seed), batch \(batch)")
            guard !kept.isEmpty else {
                XCTAssertNil(index)
                continue
            }
            XCTAssertEqual(index, before.index + 1)
            let entry = try await store.entries(from: before.index + 1, count: 1)
            let decoded = try LogEntry.decode(entry[0].bytes)
            XCTAssertEqual(decoded.operations, kept, "seed \(seed), batch \(batch)")
            XCTAssertEqual(entry[0].bytes, LogEntry(commitTimeNs: decoded.commitTimeNs, origin: Origin(sourceID: "s", position: UInt64(batch + 1)),
                                                    operations: kept).encoded())
        }
        let all = try await store.scan(limit: 1_000, now: nil).records
        XCTAssertEqual(Dictionary(uniqueKeysWithValues: all.map { ($0.key, $0.record) }), model,
                       "seed \(seed)")
        try await store.verifyChain()
    }

    /// A changed value replaces the stored one in place whatever the sizes (inline in the
    /// page, on overflow pages, empty), for short and long keys; the same write again is dropped.
    func testChangedValuesOfAnySizeReplaceAndRepeatsAreDropped() async throws {
        let long = [UInt8](repeating: 0x6c, count: 600)
        var position: UInt64 = 0
        for n in [1, 5000, 3, 100_000, 0, 7] {
            let v = [UInt8](repeating: UInt8(n % 251), count: n)
            for key in [Array("k".utf8), long] {
                let op = Mutation.set(key: key, value: v, expiry: nil)
                let r = try await store.applyBatch(sourceID: "s", expected: position, new: position + 1, operations: [op, op])
                position += 1
                guard case let .applied(index, kept, dropped) = r else { return XCTFail("\(r)") }
                XCTAssertNotNil(index)
                XCTAssertEqual([kept, dropped], [1, 1], "value of \(n) bytes, key of \(key.count)")
                await equal(try await store.get(key)?.value, v)
            }
        }
        await equal(try await store.recordCount(), 2)
        try await store.verifyChain()
    }

    func testNewPositionMustExceedExpected() async throws {
        await throwsError(try await store.applyBatch(sourceID: "s", expected: 5, new: 5, operations: [])) { error in
            XCTAssertEqual(error as? StoreError, .invalidPositions(expected: 5, new: 5))
        }
        await throwsError(try await store.applyBatch(sourceID: "", expected: 0, new: 1, operations: []))
    }

    func testClearPrefixRemovesOnlyMatchingKeys() async throws {
        var ops = [Mutation]()
        for i in 0..<5000 { ops.append(set("aux/\(i)", "v")) }
        ops.append(set("aux", "kept"))
        ops.append(set("b", "kept"))
        _ = try await store.applyBatch(sourceID: "s", expected: 0, new: 1, operations: ops)
        let r = try await store.applyBatch(sourceID: "s", expected: 1, new: 2, operations: [.clearPrefix(Array("aux/".utf8))])
        XCTAssertEqual(r, .applied(logIndex: 2, kept: 1, dropped: 0))
        await equal(try await store.recordCount(), 2)
        await isNotNil(try await store.get(Array("aux".utf8)))
    }

    /// One cursor serves a whole batch's sets: it must stay right across the batch's own
    /// deletes, prefix clears and page splits, values that move onto and off overflow pages
    /// within the batch, and keys past the stored prefix. Random keys (seeded: a failure
    /// names its seed), mixed operations over several batches, checked against a dictionary;
    /// the entries appended to a second store (the replica's path, one cursor across log and
    /// meta puts) give the same records; the same sets again are all dropped as identical.
    func testBatchesOfMixedOperationsMatchAModel() async throws {
        let seed = UInt64.random(in: 1...UInt64.max)
        var rng = SplitMix64(seed: seed)
        var model = [[UInt8]: [UInt8]]()
        let root = try Store(directory: dir.appendingPathComponent("root").path, mapSize: 512 << 20)
        func key(_ i: Int) -> [UInt8] {
            let id = String(format: "%@/%04x", ["a", "b", "c"][i % 3], UInt32.random(in: 0...0x7FF, using: &rng))
            // One key in 13 is longer than the stored key (past the prefix, hashed).
            let pad = i % 13 == 0 ? String(repeating: "p", count: 470 + Int.random(in: 0...230, using: &rng)) : ""
            return Array((id + pad).utf8)
        }
        func value(_ i: Int) -> [UInt8] {
            // Inline, empty, and one in 11 on overflow pages (LMDB: above about 2 KB).
            let n = i % 11 == 0 ? Int.random(in: 1_500...9_000, using: &rng) : (i % 97 == 0 ? 0 : Int.random(in: 1...300, using: &rng))
            return [UInt8](repeating: UInt8(truncatingIfNeeded: i &* 31 &+ n), count: n)
        }
        for batch in 0..<4 {
            var ops = [Mutation]()
            for i in batch * 6_000 ..< (batch + 1) * 6_000 {
                switch i % 10 {
                case 7 where !model.isEmpty:
                    let victim = model.keys.randomElement(using: &rng)!
                    ops.append(.delete(key: victim))
                    model[victim] = nil
                case 9 where i % 3000 == 2999:
                    ops.append(.clearPrefix(Array("b/".utf8)))
                    for k in model.keys where k.starts(with: Array("b/".utf8)) { model[k] = nil }
                case 3 where !model.isEmpty:
                    // The same key again in this batch, its value growing or shrinking across
                    // the overflow threshold.
                    let k = model.keys.randomElement(using: &rng)!
                    let v = [UInt8](repeating: UInt8(truncatingIfNeeded: i), count: (model[k]!.count > 1_000) ? 5 : 4_000)
                    ops.append(.set(key: k, value: v, expiry: nil))
                    model[k] = v
                default:
                    let (k, v) = (key(i), value(i))
                    ops.append(.set(key: k, value: v, expiry: nil))
                    model[k] = v
                }
            }
            let r = try await root.applyBatch(sourceID: "s", expected: UInt64(batch), new: UInt64(batch + 1), operations: ops)
            guard case .applied(.some, _, _) = r else { return XCTFail("seed \(seed), batch \(batch): \(r)") }
        }
        func check(_ s: Store, _ what: String) async throws {
            let all = try await s.scan(limit: 100_000, maxBytes: 1 << 30, now: nil).records
            XCTAssertEqual(all.count, model.count, "\(what), seed \(seed)")
            for (k, r) in all where r.value != model[k] {
                return XCTFail("\(what), seed \(seed): key of \(k.count) bytes holds \(r.value.count) bytes, not \(model[k]?.count ?? -1)")
            }
        }
        try await check(root, "root")
        let replica = try await Store.open(directory: dir.appendingPathComponent("replica").path, mapSize: 512 << 20)
        let entries = try await root.entries(from: 1, count: 10, maxBytes: 1 << 30)
        XCTAssertEqual(entries.count, 4)
        let rootHead = try await root.head()
        await equal(try await replica.appendEntries(entries), rootHead)
        try await check(replica, "replica")
        let sets = model.map { Mutation.set(key: $0.key, value: $0.value, expiry: nil) }
        await equal(try await root.applyBatch(sourceID: "s", expected: 4, new: 5, operations: sets),
                    .applied(logIndex: nil, kept: 0, dropped: sets.count))
        try await root.verifyChain()
        try await replica.verifyChain()
    }

    /// A source's descriptor: recorded once (a log entry), compared after, replaced only when
    /// asked; it moves no checkpoint and no copy cursor, at the root or where its entry is
    /// applied, and the store checks sound with it.
    func testADescriptorIsRecordedComparedAndReplacedWithoutMovingTheCheckpoint() async throws {
        let root = store!
        await equal(try await root.setDescriptor(sourceID: "kt", descriptor: "db-map 0=", replace: false),
                    .recorded(logIndex: 1, previous: nil))
        await equal(try await root.checkpoint(sourceID: "kt"), nil, "a source with no checkpoint still has none: its first start is one")
        await equal(try await root.setDescriptor(sourceID: "kt", descriptor: "db-map 0=", replace: false), .unchanged)
        await equal(try await root.setDescriptor(sourceID: "kt", descriptor: "db-map 0=x/", replace: false),
                    .differs(stored: "db-map 0="))
        await equal(try await root.head().index, 1, "nothing written for the same or a refused descriptor")
        _ = try await root.applyBatch(sourceID: "kt", expected: 0, new: 10, operations: [set("a", "1")], copyCursor: [7])
        // Not replaced while the source's initial copy is unfinished: its records so far are
        // under the recorded mapping.
        do {
            _ = try await root.setDescriptor(sourceID: "kt", descriptor: "db-map 0=x/", replace: true)
            XCTFail("replaced during a copy")
        } catch StoreError.copyUnfinished(let id) {
            XCTAssertEqual(id, "kt")
        }
        await equal(try await root.copyCursor(sourceID: "kt"), [7], "the copy goes on")
        _ = try await root.applyBatch(sourceID: "kt", expected: 10, new: 11, operations: [], copyCursor: [8])
        _ = try await root.applyBatch(sourceID: "kt", expected: 11, new: 12, operations: [set("a", "2")])
        await equal(try await root.copyCursor(sourceID: "kt"), nil, "the copy is over")
        await equal(try await root.setDescriptor(sourceID: "kt", descriptor: "db-map 0=x/", replace: true),
                    .recorded(logIndex: 4, previous: "db-map 0="))
        await equal(try await root.checkpoint(sourceID: "kt"), 12)
        await equal(try await root.descriptors(), ["kt": "db-map 0=x/"])
        for bad in ["", "a\nb", String(repeating: "x", count: SourceDescriptor.maxBytes + 1)] {
            do {
                _ = try await root.setDescriptor(sourceID: "kt", descriptor: bad, replace: true)
                XCTFail("recorded a descriptor of \(bad.utf8.count) bytes")
            } catch let StoreError.invalidDescriptor(why) {
                XCTAssertFalse(why.isEmpty)
            }
        }

        let replica = try await Store.open(directory: dir.appendingPathComponent("replica").path, mapSize: 64 << 20)
        // Entry by entry, so each is the last of its source in its transaction.
        for e in try await root.entries(from: 1, count: 10) { _ = try await replica.appendEntries([e]) }
        let rootHead = try await root.head()
        await equal(try await replica.head(), rootHead)
        await equal(try await replica.descriptors(), ["kt": "db-map 0=x/"])
        await equal(try await replica.checkpoint(sourceID: "kt"), 12)
        await equal(try await replica.copyCursor(sourceID: "kt"), nil)
        // All in one: the same.
        let other = try await Store.open(directory: dir.appendingPathComponent("other").path, mapSize: 64 << 20)
        _ = try await other.appendEntries(try await root.entries(from: 1, count: 10))
        await equal(try await other.descriptors(), ["kt": "db-map 0=x/"])
        await equal(try await other.checkpoint(sourceID: "kt"), 12)
        for s in [root, replica, other] {
            let report = try await s.check()
            XCTAssertTrue(report.sound, "\(report.problems)")
        }
    }

    func testLongKeysAreStoredWholeAndDistinct() async throws {
        XCTAssertEqual(store.maxKeySize, 511)
        let base = [UInt8](repeating: 0x61, count: 600)
        var k1 = base; k1[599] = 1
        var k2 = base; k2[599] = 2
        let k3 = [UInt8](repeating: 0x62, count: 100_000)
        let boundary = [477, 478, 479, 510, 511, 512].map { [UInt8](repeating: 0x63, count: $0) }
        var ops: [Mutation] = [.set(key: k1, value: [1], expiry: nil), .set(key: k2, value: [2], expiry: nil),
                                        .set(key: k3, value: [3], expiry: 9), .set(key: [], value: [4], expiry: nil)]
        for (i, k) in boundary.enumerated() { ops.append(.set(key: k, value: [UInt8(10 + i)], expiry: nil)) }
        _ = try await store.applyBatch(sourceID: "s", expected: 0, new: 1, operations: ops)
        await equal(try await store.get(k1)?.value, [1])
        await equal(try await store.get(k2)?.value, [2])
        await equal(try await store.get(k3), Record(value: [3], expiry: 9))
        await equal(try await store.get([])?.value, [4])
        for (i, k) in boundary.enumerated() { await equal(try await store.get(k)?.value, [UInt8(10 + i)], "key of \(k.count) bytes") }
        await isNil(try await store.get(Array(base[0..<599])))
        let all = try await store.scan(limit: 100, now: nil).records
        XCTAssertEqual(Set(all.map(\.key)), Set([k1, k2, k3, []] + boundary))
        // A prefix longer than the stored prefix still selects exactly.
        let page = try await store.scan(prefix: Array(base[0..<599]) + [2], limit: 100, now: nil)
        XCTAssertEqual(page.records.map(\.key), [k2])
        // Identical long-key writes are dropped; deletes hit the right key.
        await equal(try await store.applyBatch(sourceID: "s", expected: 1, new: 2, operations: [.set(key: k1, value: [1], expiry: nil), .delete(key: k2)]),
                       .applied(logIndex: 2, kept: 1, dropped: 1))
        await isNil(try await store.get(k2))
        await equal(try await store.get(k1)?.value, [1])
    }

    func testScanPagesHideExpiredAndCoverEverything() async throws {
        var ops = [Mutation]()
        for i in 0..<2500 { ops.append(set(String(format: "k%05d", i), "v\(i)", i % 10 == 0 ? 100 : nil)) }
        _ = try await store.applyBatch(sourceID: "s", expected: 0, new: 1, operations: ops)
        var seen = [[UInt8]]()
        var cursor: [UInt8]?
        repeat {
            let page = try await store.scan(after: cursor, limit: 333, now: 101)
            XCTAssertLessThanOrEqual(page.records.count, 333)
            seen += page.records.map(\.key)
            cursor = page.next
        } while cursor != nil
        XCTAssertEqual(seen.count, 2250)
        XCTAssertEqual(seen, seen.sorted { $0.lexicographicallyPrecedes($1) })
        // As KT (kttimeddb.h, `ct > xt`): a record is read through the second it expires at.
        await equal(try await store.scan(limit: 5000, now: 100).records.count, 2500, "not yet expired at 100, its expiry second")
    }

    func testChainVerifiesAndSurvivesReopen() async throws {
        for i in 0..<50 {
            _ = try await store.applyBatch(sourceID: "s", expected: UInt64(i), new: UInt64(i + 1), operations: [set("k\(i % 7)", "v\(i)")])
        }
        await equal(try await store.verifyChain(), 50)
        let head = try await store.head()
        let id = try await store.identity()
        store = nil
        store = try Store(directory: dir.path, mapSize: 64 << 20)
        await equal(try await store.head(), head)
        await equal(try await store.identity(), id)
        await equal(try await store.verifyChain(), 50)
        await equal(try await store.checkpoint(sourceID: "s"), 50)
    }

    func testAnEmptyStoreVerifiesAndReplicatesItsEmptiness() async throws {
        await equal(try await store.verifyChain(), 0)
        let snap = dir.appendingPathComponent("snap")
        try FileManager.default.createDirectory(at: snap, withIntermediateDirectories: true)
        await equal(try await store.snapshot(into: snap.path), Head.empty)
        let copy = try await Store.open(directory: snap.path, readOnly: true)
        await equal(try await copy.verifyChain(), 0)
    }

    func testAppendEntriesContinuesTheChainOrRefuses() async throws {
        let other = try await Store.open(directory: dir.appendingPathComponent("other").path, mapSize: 64 << 20)
        for i in 0..<5 {
            _ = try await store.applyBatch(sourceID: "s", expected: UInt64(i), new: UInt64(i + 1), operations: [set("k\(i)", "v")])
        }
        let entries = try await store.entries(from: 1, count: 10)
        await throwsError(try await other.appendEntries(Array(entries[1...]))) { XCTAssertEqual($0 as? AppendError, .notNext(head: 0, got: 2)) }
        var forged = entries
        forged[2].bytes[forged[2].bytes.count - 1] ^= 1
        await throwsError(try await other.appendEntries(forged)) { XCTAssertEqual($0 as? AppendError, .diverged(index: 3)) }
        await equal(try await other.head(), Head.empty, "nothing written when any entry fails")
        let storeHead = try await store.head()
        await equal(try await other.appendEntries(entries), storeHead)
        await equal(try await other.checkpoint(sourceID: "s"), 5)
        await equal(try await other.scan(limit: 10, now: nil).records.count, 5)
        // Trimming keeps the chain verifiable from the retained window.
        await equal(try await other.trimLog(retain: 2), 3)
        await equal(try await other.logWindow().firstIndex, 4)
        await equal(try await other.verifyChain(), 2)
        await equal(try await other.hash(at: 3), entries[2].hash)
        await isNil(try await other.hash(at: 2))
    }

    func testMapFullIsAnErrorAndNothingIsWritten() async throws {
        try onlyOnLMDB("the map's size")
        let small = dir.appendingPathComponent("small")
        let s = try Store(directory: small.path, mapSize: 1 << 20)
        let big = [UInt8](repeating: 7, count: 400_000)
        _ = try await s.applyBatch(sourceID: "s", expected: 0, new: 1, operations: [.set(key: [1], value: big, expiry: nil)])
        await throwsError(try await s.applyBatch(sourceID: "s", expected: 1, new: 2,
                                              operations: (2..<8).map { .set(key: [UInt8($0)], value: big, expiry: nil) })) { error in
            XCTAssertTrue((error as? LMDBError)?.isMapFull ?? false, "\(error)")
        }
        await equal(try await s.checkpoint(sourceID: "s"), 1)
        await equal(try await s.head().index, 1)
        await equal(try await s.verifyChain(), 1)
    }

    func testLogEntryCodecRejectsGarbage() {
        let e = LogEntry(commitTimeNs: 1, origin: Origin(sourceID: "s", position: 2), operations: [set("a", "b", 3), .delete(key: [1]), .clearPrefix([])])
        XCTAssertEqual(try LogEntry.decode(e.encoded()), e)
        var bytes = e.encoded()
        bytes.append(0)
        XCTAssertThrowsError(try LogEntry.decode(bytes))
        XCTAssertThrowsError(try LogEntry.decode(Array(e.encoded().dropLast())))
        XCTAssertThrowsError(try LogEntry.decode([1, 0, 0]))
        var copied = e
        copied.copyCursor = [9, 8, 7]
        XCTAssertEqual(try LogEntry.decode(copied.encoded()), copied)
        XCTAssertEqual(copied.encoded().count, e.encoded().count + 4 + 3)
        XCTAssertThrowsError(try LogEntry.decode([LogEntry.copyVersion] + e.encoded().dropFirst()), "a version-2 entry needs its cursor")
    }
}
