import Foundation
import QSModel
import QSStore
import XCTest

/// A root's write role (docs/protocol.md, "Promote and demote"): a mirror takes compatible
/// appends only, a promoted root batches only; checkpoints travel with mirrored entries.
final class WriteRoleTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("roles-\(UUID().uuidString)")
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: dir)
    }

    func open(_ name: String) async throws -> Store {
        try await Store.open(directory: dir.appendingPathComponent(name).path, mapSize: 64 << 20)
    }

    func set(_ k: String, _ v: String) -> Mutation { .set(key: Array(k.utf8), value: Array(v.utf8), expiry: nil) }

    /// An initial copy's cursor travels with its batches' entries: a bridge moved to the
    /// mirror resumes the copy where it stood instead of copying again.
    func testMirroredEntriesCarryTheInitialCopyCursor() async throws {
        let legacy = try await open("L"), mirror = try await open("N")
        let sid = "kt:127.0.0.1:1978", other = "qsctl"
        _ = try await legacy.applyBatch(sourceID: other, expected: 0, new: 1, operations: [set("z", "1")])
        _ = try await legacy.applyBatch(sourceID: sid, expected: 0, new: 1, operations: [set("a", "1")], copyCursor: [1, 2])
        _ = try await legacy.applyBatch(sourceID: sid, expected: 1, new: 2, operations: [set("b", "1")], copyCursor: [1, 3])
        let entries = try await legacy.entries(from: 1, count: 10)
        XCTAssertEqual(try entries.map { try LogEntry.decode($0.bytes).copyCursor }, [nil, [1, 2], [1, 3]])
        XCTAssertEqual(entries.map { $0.bytes[0] }, [LogEntry.version, LogEntry.copyVersion, LogEntry.copyVersion],
                       "only an entry carrying a cursor changes its encoding")
        _ = try await mirror.appendEntries(Array(entries[0...1]), markCompatible: true)
        await equal(try await mirror.copyCursor(sourceID: sid), [1, 2])
        _ = try await mirror.appendEntries([entries[2]])
        await equal(try await mirror.copyCursor(sourceID: sid), [1, 3])
        await equal(try await mirror.checkpoints(), ["kt:127.0.0.1:1978": 2, "qsctl": 1])
        // Another source's entry leaves the cursor; the source's own entry without one (the
        // feed after the copy) removes it, as its batch did at the root.
        _ = try await legacy.applyBatch(sourceID: other, expected: 1, new: 2, operations: [set("z", "2")])
        _ = try await mirror.appendEntries(try await legacy.entries(from: 4, count: 1))
        await equal(try await mirror.copyCursor(sourceID: sid), [1, 3])
        let t0: UInt64 = 1_790_000_000_000_000_000
        _ = try await legacy.applyBatch(sourceID: sid, expected: 2, new: t0, operations: [set("c", "1")])
        await isNil(try await legacy.copyCursor(sourceID: sid))
        _ = try await mirror.appendEntries(try await legacy.entries(from: 5, count: 1))
        await isNil(try await mirror.copyCursor(sourceID: sid))
        await equal(try await mirror.checkpoint(sourceID: sid), t0)
        let legacyHead = try await legacy.head()
        await equal(try await mirror.head(), legacyHead)
    }

    func testMirroredEntriesCarryEverySourcesCheckpoint() async throws {
        let legacy = try await open("L"), mirror = try await open("N")
        let kt: UInt64 = 1_790_000_000_000_000_000
        _ = try await legacy.applyBatch(sourceID: "kt:127.0.0.1:1978", expected: 0, new: kt, operations: [set("a", "1")])
        _ = try await legacy.applyBatch(sourceID: "qsctl", expected: 0, new: 1, operations: [set("b", "1")])
        _ = try await legacy.applyBatch(sourceID: "kt:127.0.0.1:1978", expected: kt, new: kt + 5, operations: [set("a", "2"), set("c", "1")])
        let legacyHead = try await legacy.head()
        await equal(try await mirror.appendEntries(try await legacy.entries(from: 1, count: 10), markCompatible: true), legacyHead)
        await equal(try await mirror.checkpoints(), ["kt:127.0.0.1:1978": kt + 5, "qsctl": 1])
        // A position applied without an entry (identical writes, a heartbeat's advance)
        // moves the source root's checkpoint only: the mirror keeps the last entry's
        // position, and a bridge resuming there re-reads only changes that change nothing.
        await equal(try await legacy.applyBatch(sourceID: "kt:127.0.0.1:1978", expected: kt + 5, new: kt + 9, operations: []),
                    .applied(logIndex: nil, kept: 0, dropped: 0))
        await equal(try await legacy.checkpoint(sourceID: "kt:127.0.0.1:1978"), kt + 9)
        await equal(try await legacy.head().index, 3, "an empty batch appends no entry")
        await equal(try await mirror.checkpoint(sourceID: "kt:127.0.0.1:1978"), kt + 5)
    }

    func testPromoteAndDemoteSwitchWhichWritesARootTakes() async throws {
        let legacy = try await open("L"), new = try await open("N")
        await equal(try await new.writeRole(), .open)
        _ = try await legacy.applyBatch(sourceID: "s", expected: 0, new: 1, operations: [set("a", "1")])
        _ = try await new.appendEntries(try await legacy.entries(from: 1, count: 10), markCompatible: true)
        await equal(try await new.writeRole(), .mirror)
        await throwsError(try await new.applyBatch(sourceID: "s", expected: 1, new: 2, operations: [set("a", "2")])) {
            XCTAssertEqual($0 as? StoreError, .compatibleOnly)
        }

        // Promote: the same log continues with batches; appends are refused.
        let promotedAt = try await new.setWriteRole(.promoted)
        await equal(try await legacy.head(), promotedAt)
        await equal(try await new.applyBatch(sourceID: "s", expected: 1, new: 2, operations: [set("a", "2")]),
                    .applied(logIndex: 2, kept: 1, dropped: 0))
        let more = try await new.entries(from: 2, count: 10)
        await throwsError(try await new.appendEntries(more, markCompatible: true)) { XCTAssertEqual($0 as? StoreError, .promoted) }

        // Demote the legacy root: it takes the new root's entries after its own head, and no batch.
        await equal(try await legacy.setWriteRole(.mirror), promotedAt)
        await throwsError(try await legacy.applyBatch(sourceID: "s", expected: 1, new: 2, operations: [set("x", "1")])) {
            XCTAssertEqual($0 as? StoreError, .compatibleOnly)
        }
        let newHead = try await new.head()
        await equal(try await legacy.appendEntries(more, markCompatible: true), newHead)
        await equal(try await legacy.checkpoint(sourceID: "s"), 2)
        await equal(try await legacy.get(Array("a".utf8))?.value, Array("2".utf8))
        // The roles are stored in the environment (meta), not held in memory.
        await equal(try await new.writeRole(), .promoted)
        await equal(try await legacy.writeRole(), .mirror)
    }

    /// A replica applies its upstream's entries from the frame's bytes (`PackedEntries`), and
    /// an upstream writes them from its log's pages (`packedEntries(from:)`): the same entries,
    /// the same store afterwards, the same refusals as the `[StoredEntry]` paths.
    func testPackedEntriesAreTheEntriesAndApplyAsThem() async throws {
        let root = try await open("root"), a = try await open("a"), b = try await open("b")
        for p in 1...40 as ClosedRange<UInt64> {
            let ops: [Mutation] = p % 7 == 0 ? [.delete(key: Array("k\(p - 1)".utf8))]
                : [.set(key: Array("k\(p)".utf8), value: Array(repeating: UInt8(p), count: Int(p) * 10), expiry: p % 5 == 0 ? 4_000_000_000 : nil),
                   .set(key: Array("j\(p % 3)".utf8), value: Array("v\(p)".utf8), expiry: nil)]
            _ = try await root.applyBatch(sourceID: p % 2 == 0 ? "even" : "odd", expected: p % 2 == 0 ? p - 2 : (p == 1 ? 0 : p - 2), new: p,
                                          operations: ops, copyCursor: p == 9 ? [7] : nil)
        }
        // The same entries either way, in pages of every size the store cuts them at.
        for (from, count, maxBytes) in [(1, 1000, 4 << 20), (5, 3, 4 << 20), (1, 1000, 700), (41, 10, 4 << 20), (0, 2, 4 << 20)] as [(UInt64, Int, Int)] {
            let list = try await root.entries(from: from, count: count, maxBytes: maxBytes)
            let packed = try await root.packedEntries(from: from, count: count, maxBytes: maxBytes)
            XCTAssertEqual(packed, PackedEntries(list), "from \(from), count \(count), maxBytes \(maxBytes)")
            XCTAssertEqual(packed.entries, list)
        }
        // Applied packed on one replica and decoded on the other: the same head, log, keyspace
        // and checkpoints.
        var next: UInt64 = 1
        while true {
            let packed = try await root.packedEntries(from: next, count: 6)
            guard !packed.isEmpty else { break }
            _ = try await a.appendEntries(packed)
            _ = try await b.appendEntries(packed.entries)
            next += UInt64(packed.count)
        }
        let rootHead = try await root.head()
        let headA = try await a.head(), headB = try await b.head()
        XCTAssertEqual(headA, rootHead)
        XCTAssertEqual(headB, rootHead)
        let logA = try await a.entries(from: 1, count: 1000), logB = try await b.entries(from: 1, count: 1000)
        XCTAssertEqual(logA, logB)
        let scanA = try await a.scan(limit: 1000, now: nil), scanB = try await b.scan(limit: 1000, now: nil)
        XCTAssertEqual(scanA.records.map(\.key), scanB.records.map(\.key))
        XCTAssertEqual(scanA.records.map(\.record), scanB.records.map(\.record))
        let cpA = try await a.checkpoints(), cpB = try await b.checkpoints()
        XCTAssertEqual(cpA, cpB)
        XCTAssertEqual(cpA, ["even": 40, "odd": 39])
        let cursorA = try await a.copyCursor(sourceID: "odd"), cursorB = try await b.copyCursor(sourceID: "odd")
        XCTAssertEqual(cursorA, cursorB)

        // Refusals: an entry that does not follow the head, one whose hash does not chain,
        // one that does not decode; nothing of the list is applied.
        let c = try await open("c")
        let first = try await root.entries(from: 1, count: 3)
        func refusal(_ list: [StoredEntry]) async -> String {
            do { _ = try await c.appendEntries(PackedEntries(list)); return "applied" } catch { return "\(error)" }
        }
        func refusalDecoded(_ list: [StoredEntry]) async -> String {
            do { _ = try await c.appendEntries(list); return "applied" } catch { return "\(error)" }
        }
        var badHash = first
        badHash[1].hash[0] ^= 1
        var badBytes = first
        badBytes[2].bytes = [LogEntry.version, 1, 2]
        badBytes[2].hash = ChainHash.next(previous: first[1].hash, entry: badBytes[2].bytes)
        for list in [Array(first[1...]), badHash, badBytes] {
            let packedError = await refusal(list), decodedError = await refusalDecoded(list)
            XCTAssertNotEqual(packedError, "applied")
            XCTAssertEqual(packedError, decodedError)
            let head = try await c.head()
            XCTAssertEqual(head.index, 0, "a refused list leaves nothing applied")
        }
        // An entry of a version this build does not read, its hash chained (a newer node
        // wrote it): said so, with the remedy.
        var newer = first
        newer[0].bytes = [99] + first[0].bytes.dropFirst()
        newer[0].hash = ChainHash.next(previous: [UInt8](repeating: 0, count: 32), entry: newer[0].bytes)
        do {
            _ = try await c.appendEntries(Array(newer.prefix(1)))
            XCTFail("applied an entry of version 99")
        } catch let error as AppendError {
            XCTAssertTrue(error.isNewerFormat)
            XCTAssertTrue("\(error)".contains("written by a newer node: upgrade this one"), "\(error)")
        }
        XCTAssertFalse(AppendError.undecodable(index: 1, reason: "truncated").isNewerFormat)
    }
}
