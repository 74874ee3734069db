import Foundation
import QSModel
import QSStore
import XCTest

/// What a root cluster's member commits (`prepareBatch`, then `applyCommitted` of the
/// prepared entry) leaves the log byte for byte as a single root's `applyBatch`.
final class ClusterPrepareTests: XCTestCase {
    var dirs = [URL]()

    func open() throws -> Store {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("store-\(UUID().uuidString)")
        dirs.append(dir)
        return try Store(directory: dir.path, mapSize: 64 << 20)
    }

    override func tearDownWithError() throws {
        for d in dirs { try? FileManager.default.removeItem(at: d) }
    }

    func testPreparedEntriesAppliedEqualASingleRootsLogAndWriteNothingThemselves() async throws {
        let single = try open(), member = try open()
        let batches: [[Mutation]] = [
            [.set(key: Array("a".utf8), value: [1], expiry: nil), .set(key: Array("b".utf8), value: [2], expiry: 4_102_444_800)],
            [.set(key: Array("a".utf8), value: [1], expiry: nil)],  // identical: no entry, the checkpoint moves
            [.set(key: Array("a".utf8), value: [1], expiry: nil), .delete(key: Array("b".utf8)), .clearPrefix(Array("z".utf8))],
            [.clearPrefix([])],
        ]
        for (i, ops) in batches.enumerated() {
            let now = UInt64(1_000 + i)
            let want = try await single.applyBatch(sourceID: "s", expected: UInt64(i), new: UInt64(i + 1), operations: PackedMutations(ops), now: now)
            let before = try await member.head()
            let p = try await member.prepareBatch(sourceID: "s", expected: UInt64(i), new: UInt64(i + 1), operations: PackedMutations(ops), now: now)
            let after = try await member.head()
            XCTAssertEqual(after, before, "preparing writes nothing")
            XCTAssertEqual(p.outcome, want)
            XCTAssertEqual(p.base, before)
            try await member.applyCommitted(entries: p.entry.map { [$0] } ?? [], checkpoints: ["s": UInt64(i + 1)])
            let memberHead = try await member.head(), singleHead = try await single.head()
            XCTAssertEqual(memberHead, singleHead)
            XCTAssertEqual(p.head, singleHead)
        }
        let memberLog = try await member.entries(from: 1, count: 100), singleLog = try await single.entries(from: 1, count: 100)
        XCTAssertEqual(memberLog, singleLog)
        let memberCP = try await member.checkpoints(), singleCP = try await single.checkpoints()
        XCTAssertEqual(memberCP, singleCP)
        let conflict = try await member.prepareBatch(sourceID: "s", expected: 0, new: 9, operations: PackedMutations(batches[0]))
        XCTAssertEqual(conflict.outcome, .conflict(current: UInt64(batches.count)))
    }

    /// A compatible append prepared at a member's head: checked by `appendEntries`, the
    /// head after it as a mirror's, nothing written; entries that do not follow are refused.
    func testAPreparedAppendIsCheckedAndWritesNothing() async throws {
        let source = try open(), member = try open(), mirror = try open()
        for i in 0..<3 {
            _ = try await source.applyBatch(sourceID: "s", expected: UInt64(i), new: UInt64(i + 1),
                                            operations: [.set(key: Array("k\(i)".utf8), value: [UInt8(i)], expiry: nil)])
        }
        let entries = try await source.entries(from: 1, count: 10)
        let p = try await member.prepareAppend(entries)
        XCTAssertEqual(p.base, .empty)
        let memberHead = try await member.head()
        XCTAssertEqual(memberHead, .empty, "preparing writes nothing")
        let mirrored = try await mirror.appendEntries(entries, markCompatible: true)
        XCTAssertEqual(p.head, mirrored)
        do {
            _ = try await member.prepareAppend(Array(entries.dropFirst()))
            XCTFail("entries not following the head were taken")
        } catch let e as AppendError {
            XCTAssertEqual(e, .notNext(head: 0, got: 2))
        }
        try await member.applyCommitted(entries: entries, checkpoints: [:], role: .mirror)
        let role = try await member.writeRole(), cp = try await member.checkpoint(sourceID: "s")
        XCTAssertEqual(role, .mirror)
        XCTAssertEqual(cp, 3, "the checkpoint travels with the entries")
    }
}
