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
}
