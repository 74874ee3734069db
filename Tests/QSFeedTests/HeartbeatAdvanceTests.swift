import QSFeed
import QSModel
import QSTesting
import XCTest

/// A quiet source's heartbeats that carry a position (KT's) reach the root as checkpoint
/// advances without a change, at most one per batch interval, so a cut-over barrier
/// (`qsctl wait --until`) completes while nothing is written.
final class HeartbeatAdvanceTests: XCTestCase {
    let sid = "kt-source"

    func start(_ source: ScriptedSource, _ root: ScriptedRoot, interval: Duration, mode: WriteMode = .batched,
               flushWhenCaughtUp: Bool = true) -> Task<Void, any Error> {
        let consumer = FeedConsumer(source: source, sourceID: sid, root: root.writer(),
                                    limits: BatchLimits(interval: interval, maxOps: 1000, maxBytes: 1 << 20, mode: mode,
                                                        flushWhenCaughtUp: flushWhenCaughtUp),
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

    /// `--flush-when-caught-up` (the default): a heartbeat with a position (KT's NOP: its
    /// reader reached the end) ends the batch at once; the interval (an hour here) never
    /// comes. A heartbeat without a position (a capture's, a QS node's) does not.
    func testACaughtUpSourceFlushesWithoutWaitingForTheInterval() async throws {
        let source = ScriptedSource(), root = ScriptedRoot()
        let run = start(source, root, interval: .seconds(3600))
        source.send((1...5).map { .event(.change(change($0))) } + [heartbeat(5)])
        try await waitFor("changes 1-5 applied at the heartbeat") { root.snapshot.checkpoints[sid] == 5 }
        XCTAssertEqual(root.snapshot.batches.map { [$0.expected, $0.new] }, [[0, 5]], "one batch, all five")
        source.send([.event(.change(change(6))), .event(.change(change(7))), heartbeat(nil)])
        try await waitFor("6, 7 and the heartbeat handled") { source.snapshot.handled == 9 }
        XCTAssertEqual(root.snapshot.startedBatches, 1, "a heartbeat without a position does not flush")
        source.send([heartbeat(9)])
        try await waitFor("changes 6-7 applied at the heartbeat") { root.snapshot.checkpoints[sid] == 7 }
        XCTAssertEqual(root.snapshot.batches.last.map { [$0.expected, $0.new] }, [5, 7], "the changes, not the vouched position")
        XCTAssertEqual(root.snapshot.batches.count, 2)
        // The vouched position is a position-only write, left to the ticker (or the end).
        source.finish()
        try await within(.seconds(10), "run") { try await run.value }
        XCTAssertEqual(root.snapshot.checkpoints[sid], 9)
        XCTAssertEqual((1...7).map { root.snapshot.writes[key($0)] }, Array(repeating: 1, count: 7))
    }

    func testWithoutFlushWhenCaughtUpTheBatchWaitsForTheInterval() async throws {
        let source = ScriptedSource(), root = ScriptedRoot()
        let run = start(source, root, interval: .seconds(3600), flushWhenCaughtUp: false)
        source.send((1...3).map { .event(.change(change($0))) } + [heartbeat(3)])
        try await waitFor("changes and heartbeat handled") { source.snapshot.handled == 4 }
        XCTAssertEqual(root.snapshot.startedBatches, 0, "nothing sent before the interval")
        source.finish()
        try await within(.seconds(10), "run") { try await run.value }
        XCTAssertEqual(root.snapshot.checkpoints[sid], 3)
    }
}
