import QSFeed
import QSModel
import QSTesting
import XCTest

/// A quiet source's heartbeats that carry a position (KT's) reach the root as checkpoint
/// advances without a change, at most one per batch interval, so a cut-over barrier
/// (`qsctl wait --until`) completes while nothing is written.
final class HeartbeatAdvanceTests: XCTestCase {
    let sid = "kt-source"

    func start(_ source: ScriptedSource, _ root: ScriptedRoot, interval: Duration, mode: WriteMode = .batched) -> Task<Void, any Error> {
        let consumer = FeedConsumer(source: source, sourceID: sid, root: root.writer(),
                                    limits: BatchLimits(interval: interval, maxOps: 1000, maxBytes: 1 << 20, mode: mode),
                                    logger: quietLogger)
        let run = Task { try await consumer.run() }
        addTeardownBlock {
            run.cancel()
            _ = try? await run.value
        }
        return run
    }

    func heartbeat(_ position: UInt64?) -> ScriptedSource.Item {
        .event(.heartbeat(sourceTimeNs: wallClockNanoseconds(), position: position))
    }

    func testAQuietSourcesHeartbeatMovesTheCheckpointWithoutAChange() async throws {
        let source = ScriptedSource(), root = ScriptedRoot()
        let run = start(source, root, interval: .milliseconds(20))
        source.send((1...3).map { change($0) })
        try await waitFor("changes applied") { root.snapshot.checkpoints[sid] == 3 }
        source.send([heartbeat(10), heartbeat(20)])
        try await waitFor("the checkpoint at the newest heartbeat") { root.snapshot.checkpoints[sid] == 20 }
        let advances = root.snapshot.batches.filter { $0.operations.isEmpty }
        XCTAssertFalse(advances.isEmpty)
        XCTAssertEqual(advances.last?.new, 20)
        XCTAssertTrue(advances.allSatisfy { $0.expected >= 3 }, "after the changes, never instead of them")
        // A heartbeat at or behind the checkpoint, or without a position, writes nothing.
        let sent = root.snapshot.batches.count
        source.send([heartbeat(20), heartbeat(nil), heartbeat(15)])
        try await waitFor("heartbeats read") { source.snapshot.queue.isEmpty && source.snapshot.delivering == nil }
        source.send([change(21)])
        try await waitFor("change 21 applied") { root.snapshot.checkpoints[sid] == 21 }
        XCTAssertEqual(root.snapshot.batches.count, sent + 1, "only change 21's batch")
        XCTAssertEqual(root.snapshot.writes[key(21)], 1)
        source.finish()
        try await within(.seconds(10), "run") { try await run.value }
    }

    func testAdvancesAreBoundedToOnePerBatchInterval() async throws {
        let source = ScriptedSource(), root = ScriptedRoot()
        let run = start(source, root, interval: .seconds(3600))
        // Many heartbeats between two flushes: one write, at the end of the source.
        source.send((1...50).map { heartbeat(UInt64($0) * 10) })
        source.finish()
        try await within(.seconds(10), "run") { try await run.value }
        XCTAssertEqual(root.snapshot.batches.map { [$0.expected, $0.new] }, [[0, 500]])
        XCTAssertEqual(root.snapshot.checkpoints[sid], 500)
    }

    func testCompatibleModeNeverAdvancesOnHeartbeats() async throws {
        let source = ScriptedSource(), root = ScriptedRoot()
        let run = start(source, root, interval: .milliseconds(20), mode: .compatible)
        source.send([heartbeat(10), heartbeat(20)])
        source.finish()
        try await within(.seconds(10), "run") { try await run.value }
        XCTAssertEqual(root.snapshot.batches.count, 0)
        XCTAssertTrue(root.snapshot.appends.allSatisfy(\.isEmpty), "only probes: does the target still take appends?")
    }
}
