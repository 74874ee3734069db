import Foundation
import QSModel
import QSStore
import QSTesting
import XCTest

/// `Store.streamSnapshot`: LMDB's compacted copy straight from a pipe, its size read from
/// the copy's meta page, its digest, and a resume that continues only the same bytes.
final class SnapshotStreamTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("qs-stream-\(UUID().uuidString)")
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: dir)
    }

    struct Streamed {
        var start: SnapshotStreamStart
        var bytes: [UInt8]
        var digest: [UInt8]
    }

    func stream(_ store: Store, resume: SnapshotResume? = nil) async throws -> Streamed {
        var start: SnapshotStreamStart?
        var bytes = [UInt8]()
        let digest = try await store.streamSnapshot(resume: resume, start: { start = $0 }, chunk: { bytes += $0 })
        return Streamed(start: try XCTUnwrap(start), bytes: bytes, digest: digest)
    }

    func resume(_ whole: Streamed, at offset: Int) -> SnapshotResume {
        let prefix = SnapshotDigest()
        prefix.update(Array(whole.bytes[..<offset]))
        return SnapshotResume(index: whole.start.head.index, hash: whole.start.head.hash, size: whole.start.size,
                              offset: UInt64(offset), digest: prefix.bytes)
    }

    func testAResumedStreamContinuesTheSameBytesAndAChangedStoreStartsOver() async throws {
        try onlyOnLMDB("the compacted copy is LMDB's; a RocksDB store streams its checkpoint and never resumes")
        let store = try Store(directory: dir.path)
        let value = [UInt8](repeating: 7, count: 3000)
        for batch in 0..<10 {
            let ops: [Mutation] = (0..<200).map { .set(key: Array("k\(batch)-\($0)".utf8), value: value, expiry: nil) }
            _ = try await store.applyBatch(sourceID: "s", expected: UInt64(batch), new: UInt64(batch + 1), operations: ops)
        }
        let whole = try await stream(store)
        await equal(whole.start.offset, 0)
        XCTAssertNil(whole.start.refused)
        let head = try await store.head()
        await equal(whole.start.head, head, "the head is the copy's own")
        await equal(UInt64(whole.bytes.count), whole.start.size, "the size read from the meta page is the copy's")
        XCTAssertGreaterThan(whole.bytes.count, 6 << 20)
        let all = SnapshotDigest()
        all.update(whole.bytes)
        await equal(whole.digest, all.bytes)

        // An unchanged store copies to the same bytes: the rest follows the prefix held.
        let half = whole.bytes.count / 2 + 123
        let resumed = try await stream(store, resume: resume(whole, at: half))
        await equal(resumed.start.offset, UInt64(half))
        XCTAssertNil(resumed.start.refused)
        await equal(resumed.bytes, Array(whole.bytes[half...]), "only the bytes after the prefix are sent")
        await equal(resumed.digest, whole.digest)

        // A prefix that is not this copy's: the whole snapshot, from the start, and why.
        var wrong = resume(whole, at: half)
        wrong.digest[0] ^= 1
        let refused = try await stream(store, resume: wrong)
        await equal(refused.start.offset, 0)
        XCTAssertTrue(refused.start.refused?.contains("differ") ?? false, "\(String(describing: refused.start.refused))")
        await equal(refused.bytes, whole.bytes)

        // The store moved on: another snapshot, from the start.
        _ = try await store.applyBatch(sourceID: "s", expected: 10, new: 11, operations: [.set(key: Array("new".utf8), value: [1], expiry: nil)])
        let moved = try await stream(store, resume: resume(whole, at: half))
        await equal(moved.start.offset, 0)
        XCTAssertTrue(moved.start.refused?.contains("index 11") ?? false, "\(String(describing: moved.start.refused))")
        let newHead = try await store.head()
        await equal(moved.start.head, newHead)
        await equal(UInt64(moved.bytes.count), moved.start.size)
    }
}
