import Foundation
import NIOConcurrencyHelpers
import QSModel
import QSStore
import XCTest

/// The store's threads: reads never wait behind a write or a snapshot copy, writes run in
/// submission order, and a write closure that throws leaves nothing behind. The tests are
/// synchronous (they run on XCTest's thread) so they can block on their own conditions,
/// each with a deadline, while the store works on its threads.
final class StoreThreadingTests: XCTestCase {
    var dir: URL!
    var store: Store!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("store-threads-\(UUID().uuidString)")
        store = try Store(directory: dir.path, mapSize: 256 << 20)
    }

    override func tearDownWithError() throws {
        store = nil
        try? FileManager.default.removeItem(at: dir)
    }

    struct Timeout: Error, CustomStringConvertible {
        let what: String
        var description: String { "timed out: \(what)" }
    }

    struct Refused: Error {}

    /// Runs `body` in a task and waits for its result at most `seconds`.
    func result<T: Sendable>(of what: String, within seconds: Double = 10,
                             _ body: @escaping @Sendable () async throws -> T) throws -> T {
        let done = DispatchSemaphore(value: 0)
        let box = NIOLockedValueBox<Result<T, any Error>?>(nil)
        Task {
            let r: Result<T, any Error>
            do { r = .success(try await body()) } catch { r = .failure(error) }
            box.withLockedValue { $0 = r }
            done.signal()
        }
        guard done.wait(timeout: .now() + seconds) == .success, let r = box.withLockedValue({ $0 }) else {
            throw Timeout(what: what)
        }
        return try r.get()
    }

    /// Polls `condition` until it holds or `seconds` pass.
    func waitUntil(_ what: String, within seconds: Double = 10, _ condition: () -> Bool) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while !condition() {
            guard Date() < deadline else { throw Timeout(what: what) }
            usleep(1000)
        }
    }


    func testAReadCompletesWhileAWriteTransactionIsOpen() throws {
        let store = self.store!
        _ = try result(of: "seed") { try await store.applyBatch(sourceID: "s", expected: 0, new: 1, operations: [setting("a", "1")]) }
        let entered = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let writing = Task {
            try await store.write { txn in
                _ = try txn.applyBatch(sourceID: "s", expected: 1, new: 2, operations: [.set(key: Array("a".utf8), value: Array("2".utf8), expiry: nil)])
                entered.signal()
                release.wait()
                return try txn.head()
            }
        }
        defer { release.signal() }
        XCTAssertEqual(entered.wait(timeout: .now() + 10), .success, "the write transaction did not start")
        // The write is open (and holds LMDB's writer lock): reads go on, seeing the last commit.
        XCTAssertEqual(try result(of: "a read during the write") { try await store.get(Array("a".utf8)) }?.value, Array("1".utf8))
        XCTAssertEqual(try result(of: "a head read during the write") { try await store.head().index }, 1)
        release.signal()
        XCTAssertEqual(try result(of: "the write") { try await writing.value }.index, 2)
        XCTAssertEqual(try result(of: "a read after the write") { try await store.get(Array("a".utf8)) }?.value, Array("2".utf8))
    }

    func testAReadAndAWriteCompleteWhileASnapshotCopyIsInProgress() throws {
        try onlyOnLMDB("copy(toFileDescriptor:) is mdb_env_copyfd2; a RocksDB snapshot is a checkpoint")
        let store = self.store!
        // Enough data that the copy cannot finish into a pipe nobody reads (its buffers
        // and the pipe's hold a few MiB at most).
        let value = [UInt8](repeating: 0x5a, count: 16 << 10)
        let ops: [Mutation] = (0..<1024).map { .set(key: Array("k\($0)".utf8), value: value, expiry: nil) }
        _ = try result(of: "seed") { try await store.applyBatch(sourceID: "s", expected: 0, new: 1, operations: ops) }
        var fds: [Int32] = [0, 0]
        XCTAssertEqual(pipe(&fds), 0)
        let (readEnd, writeEnd) = (fds[0], fds[1])
        defer { close(readEnd) }
        let copied = DispatchSemaphore(value: 0)
        let copyError = NIOLockedValueBox<(any Error)?>(nil)
        Task {
            do { try await store.copy(toFileDescriptor: writeEnd) } catch { copyError.withLockedValue { $0 = error } }
            copied.signal()
        }
        // The copy has started writing, and is stuck on the full pipe.
        var ready = pollfd(fd: readEnd, events: Int16(POLLIN), revents: 0)
        XCTAssertEqual(poll(&ready, 1, 10_000), 1, "the copy did not start writing")
        XCTAssertEqual(copied.wait(timeout: .now()), .timedOut, "the copy finished into an unread pipe")

        XCTAssertEqual(try result(of: "a read during the copy") { try await store.get(Array("k7".utf8)) }?.value, value)
        XCTAssertEqual(try result(of: "a write during the copy") {
            try await store.applyBatch(sourceID: "s", expected: 1, new: 2, operations: [setting("during", "copy")])
        }, .applied(logIndex: 2, kept: 1, dropped: 0))
        XCTAssertEqual(copied.wait(timeout: .now()), .timedOut, "the copy is still in progress")

        // Drain the pipe; the copy then finishes and holds the state it started from.
        let snapshot = dir.appendingPathComponent("copy")
        try FileManager.default.createDirectory(at: snapshot, withIntermediateDirectories: true)
        let out = open(snapshot.appendingPathComponent("data.mdb").path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        XCTAssertGreaterThanOrEqual(out, 0)
        let drained = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            var buffer = [UInt8](repeating: 0, count: 1 << 16)
            while true {
                let n = buffer.withUnsafeMutableBytes { read(readEnd, $0.baseAddress, $0.count) }
                if n <= 0 { break }
                _ = buffer.withUnsafeBytes { write(out, $0.baseAddress, n) }
            }
            close(out)
            drained.signal()
        }
        XCTAssertEqual(copied.wait(timeout: .now() + 30), .success, "the copy did not finish once read")
        XCTAssertNil(copyError.withLockedValue { $0 })
        close(writeEnd)
        XCTAssertEqual(drained.wait(timeout: .now() + 10), .success)
        let copy = try Store(directory: snapshot.path, readOnly: true)
        XCTAssertEqual(try result(of: "the copy's head") { try await copy.head().index }, 1)
        XCTAssertEqual(try result(of: "the copy's chain") { try await copy.verifyChain() }, 1)
    }

    func testWritesRunInSubmissionOrder() throws {
        let store = self.store!
        let release = DispatchSemaphore(value: 0)
        let entered = DispatchSemaphore(value: 0)
        let blocker = Task { try await store.write { _ in entered.signal(); release.wait() } }
        defer { release.signal() }
        XCTAssertEqual(entered.wait(timeout: .now() + 10), .success, "the first write did not start")
        // Each batch expects the previous one's position: any other order conflicts.
        var writes = [Task<BatchOutcome, any Error>]()
        for i in 0..<20 {
            let op = setting("k", "\(i)")
            writes.append(Task {
                try await store.write { txn in try txn.applyBatch(sourceID: "s", expected: UInt64(i), new: UInt64(i + 1), operations: [op]) }
            })
            try waitUntil("write \(i) queued") { store.queuedWrites == i + 1 }
        }
        release.signal()
        _ = try result(of: "the first write") { try await blocker.value }
        for (i, w) in writes.enumerated() {
            XCTAssertEqual(try result(of: "write \(i)") { try await w.value }, .applied(logIndex: UInt64(i + 1), kept: 1, dropped: 0))
        }
        let entries = try result(of: "the log") { try await store.entries(from: 1, count: 100) }
        XCTAssertEqual(try entries.map { try LogEntry.decode($0.bytes).operations }, (0..<20).map { [setting("k", "\($0)")] })
    }

    func testAnErrorInsideAWriteRollsItBack() throws {
        let store = self.store!
        XCTAssertThrowsError(try result(of: "a failing write") {
            try await store.write { txn -> Void in
                _ = try txn.applyBatch(sourceID: "s", expected: 0, new: 1, operations: [setting("a", "1")])
                throw Refused()
            }
        }) { XCTAssertTrue($0 is Refused, "\($0)") }
        XCTAssertNil(try result(of: "get") { try await store.get(Array("a".utf8)) })
        XCTAssertEqual(try result(of: "head") { try await store.head() }, Head.empty)
        XCTAssertNil(try result(of: "checkpoint") { try await store.checkpoint(sourceID: "s") })
        // The same batch then applies from the start: nothing of the failed one remains.
        XCTAssertEqual(try result(of: "the retry") {
            try await store.applyBatch(sourceID: "s", expected: 0, new: 1, operations: [setting("a", "1")])
        }, .applied(logIndex: 1, kept: 1, dropped: 0))
        // A read transaction refuses writes.
        XCTAssertThrowsError(try result(of: "a write in a read") {
            try await store.read { txn in try txn.applyBatch(sourceID: "s", expected: 1, new: 2, operations: []) }
        }) { XCTAssertEqual($0 as? StoreError, .readOnlyTransaction) }
    }

    /// A write held open on the writer thread until the returned semaphore is signalled
    /// (its batch: `s` 1 → 2, key `held`), once it has started.
    func holdAWriteOpen(_ store: Store) throws -> (release: DispatchSemaphore, write: Task<Head, any Error>) {
        let entered = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let write = Task {
            try await store.write { txn in
                _ = try txn.applyBatch(sourceID: "s", expected: 1, new: 2, operations: [setting("held", "1")])
                entered.signal()
                release.wait()
                return try txn.head()
            }
        }
        XCTAssertEqual(entered.wait(timeout: .now() + 10), .success, "the write transaction did not start")
        return (release, write)
    }

    /// `shutDown` (the end of a node's process) lets the writes already queued commit, and
    /// their callers hear so, before it closes the engine; the head it returns has them;
    /// later work is refused.
    func testShutDownCommitsTheWritesAlreadyQueuedThenRefusesMore() throws {
        let store = self.store!
        _ = try result(of: "seed") { try await store.applyBatch(sourceID: "s", expected: 0, new: 1, operations: [setting("a", "1")]) }
        let held = try holdAWriteOpen(store)
        let queued = NIOLockedValueBox<Result<BatchOutcome, any Error>?>(nil)
        store.applyBatch(sourceID: "s", expected: 2, new: 3, operations: PackedMutations([setting("queued", "1")])) { r in
            queued.withLockedValue { $0 = r }
        }
        try waitUntil("the batch queued behind the held write") { store.queuedWrites == 1 }
        let shutDown = Task { try await store.shutDown() }
        held.release.signal()
        XCTAssertEqual(try result(of: "shutDown") { try await shutDown.value }?.index, 3)
        XCTAssertEqual(try result(of: "the held write") { try await held.write.value }.index, 2)
        let outcome = try XCTUnwrap(queued.withLockedValue { $0 }, "the queued batch's caller was told nothing")
        XCTAssertEqual(try outcome.get(), .applied(logIndex: 3, kept: 1, dropped: 0))
        XCTAssertThrowsError(try result(of: "a write after shutDown") {
            try await store.applyBatch(sourceID: "s", expected: 3, new: 4, operations: [setting("late", "1")])
        }) { XCTAssertEqual($0 as? StoreError, .closed) }
        XCTAssertThrowsError(try result(of: "a read after shutDown") { try await store.head() }) {
            XCTAssertEqual($0 as? StoreError, .closed)
        }
    }

    /// A RocksDB store is closed by `shutDown`, not only when the last reference goes (which
    /// a process's exit never waits for): its directory lock is released at once.
    func testShutDownClosesARocksDBStore() throws {
        let path = dir.path + "-rocksdb"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = try Store(directory: path, engine: .rocksdb)
        _ = try result(of: "a write") { try await store.applyBatch(sourceID: "s", expected: 0, new: 1, operations: [setting("a", "1")]) }
        XCTAssertThrowsError(try Store(directory: path, engine: .rocksdb), "RocksDB's lock lets a second open through")
        XCTAssertEqual(try result(of: "shutDown") { try await store.shutDown() }?.index, 1)
        let again = try Store(directory: path, engine: .rocksdb)
        XCTAssertNotNil(try result(of: "the key after reopening") { try await again.get(Array("a".utf8)) })
        withExtendedLifetime(store) {}
    }

    /// A thread still busy after the limit: `shutDown` says so and leaves the engine open
    /// (the busy write still commits).
    func testShutDownGivesUpOnABusyThreadAfterItsLimit() throws {
        let store = self.store!
        _ = try result(of: "seed") { try await store.applyBatch(sourceID: "s", expected: 0, new: 1, operations: [setting("a", "1")]) }
        let held = try holdAWriteOpen(store)
        XCTAssertThrowsError(try result(of: "shutDown") { try await store.shutDown(waitingAtMost: 0.3) }) {
            guard case let .closeTimedOut(seconds, busy)? = $0 as? StoreError else { return XCTFail("\($0)") }
            XCTAssertEqual(seconds, 0.3)
            XCTAssertTrue(busy.contains("writer"), busy)
        }
        held.release.signal()
        XCTAssertEqual(try result(of: "the held write") { try await held.write.value }.index, 2)
    }
}

private func setting(_ k: String, _ v: String) -> Mutation {
    .set(key: Array(k.utf8), value: Array(v.utf8), expiry: nil)
}
