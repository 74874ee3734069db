import NIOConcurrencyHelpers
import QSFeed
import QSModel
import QSTesting
import ServiceLifecycleTestKit
import XCTest

/// The feed consumer in process — scripted source, batcher, root writer, scripted root —
/// without sockets: batching, back-pressure, conflicts and shutdown, with waits on
/// conditions under deadlines.
final class FeedConsumerTests: XCTestCase {
    let sid = "test-source"
    /// An interval no test waits for: batches in these tests go out on a size cap, at the
    /// end of the source or on shutdown.
    let never = Duration.seconds(3600)

    /// A consumer sending one batch at a time (`inFlight` 1) unless told otherwise: most
    /// tests here assert the exact batches of that shape; the pipelined ones say 2.
    func consumer(_ source: ScriptedSource, _ root: ScriptedRoot, interval: Duration? = nil,
                  maxOps: Int = 1000, maxBytes: Int = 1 << 20, inFlight: Int = 1) -> FeedConsumer<ScriptedSource> {
        FeedConsumer(source: source, sourceID: sid, root: root.writer(),
                     limits: BatchLimits(interval: interval ?? never, maxOps: maxOps, maxBytes: maxBytes, batchesInFlight: inFlight),
                     logger: quietLogger)
    }

    /// Starts `consumer.run()`; the test's teardown cancels it and awaits its end.
    func start(_ consumer: FeedConsumer<ScriptedSource>) -> Task<Void, any Error> {
        let run = Task { try await consumer.run() }
        addTeardownBlock {
            run.cancel()
            _ = try? await run.value
        }
        return run
    }

    func positions(_ batches: [ScriptedRoot.SentBatch]) -> [[UInt64]] {
        batches.map { [$0.expected, $0.new] }
    }

    // MARK: flushing

    func testBatchGoesOutOnTheOpsCap() async throws {
        let source = ScriptedSource(), root = ScriptedRoot()
        let run = start(consumer(source, root, maxOps: 5))
        source.send((1...12).map { change($0) })
        try await waitFor("two full batches") { root.snapshot.batches.count == 2 }
        XCTAssertEqual(positions(root.snapshot.batches), [[0, 5], [5, 10]])
        XCTAssertEqual(root.snapshot.batches.map(\.operations.count), [5, 5])
        // The rest waits for the timer or the end of the source.
        try await waitFor("changes 11 and 12 read") { source.snapshot.delivered.count == 12 }
        source.finish()
        try await within(.seconds(10), "run") { try await run.value }
        XCTAssertEqual(positions(root.snapshot.batches), [[0, 5], [5, 10], [10, 12]])
        XCTAssertEqual(root.snapshot.checkpoints[sid], 12)
        XCTAssertEqual(root.snapshot.values.count, 12)
    }

    func testBatchGoesOutOnTheBytesCap() async throws {
        let source = ScriptedSource(), root = ScriptedRoot()
        let run = start(consumer(source, root, maxBytes: 100))
        // Each change is 40 payload bytes (a 2-byte key, a 38-byte value): a third one
        // reaches the cap, and a batch holds the two that fit under it.
        source.send((1...7).map { change($0, value: [UInt8](repeating: 0x61, count: 38)) })
        try await waitFor("three batches under the bytes cap") { root.snapshot.batches.count == 3 }
        XCTAssertEqual(positions(root.snapshot.batches), [[0, 2], [2, 4], [4, 6]])
        source.finish()
        try await within(.seconds(10), "run") { try await run.value }
        XCTAssertEqual(positions(root.snapshot.batches), [[0, 2], [2, 4], [4, 6], [6, 7]])
        XCTAssertEqual(root.snapshot.checkpoints[sid], 7)
    }

    func testBatchGoesOutOnTheTimer() async throws {
        let source = ScriptedSource(), root = ScriptedRoot()
        let run = start(consumer(source, root, interval: .milliseconds(20)))
        source.send((1...3).map { change($0) })
        // Far below every cap and the source still open: only the ticker sends them.
        try await waitFor("changes 1…3 applied by the ticker") { root.snapshot.checkpoints[sid] == 3 }
        source.send((4...5).map { change($0) })
        try await waitFor("changes 4…5 applied by the ticker") { root.snapshot.checkpoints[sid] == 5 }
        XCTAssertEqual(source.snapshot.runs, [0])
        let sent = root.snapshot.batches.count
        source.finish()
        try await within(.seconds(10), "run") { try await run.value }
        let batches = root.snapshot.batches
        XCTAssertEqual(batches.count, sent, "nothing left to flush at the end")
        // However the ticks fell, the batches chain from 0 to 5 and each change went once.
        XCTAssertEqual(batches.first?.expected, 0)
        XCTAssertEqual(batches.last?.new, 5)
        XCTAssertEqual(zip(batches, batches.dropFirst()).filter { $0.new != $1.expected }.count, 0)
        XCTAssertEqual(root.snapshot.writes, Dictionary(uniqueKeysWithValues: (1...5).map { (key($0), 1) }))
    }

    func testLaterWritesToAKeyWinWithinABatch() async throws {
        let source = ScriptedSource(), root = ScriptedRoot()
        let run = start(consumer(source, root))
        let x = Array("x".utf8), y = Array("y".utf8)
        source.send([
            FeedChange(position: 1, operations: [.set(key: x, value: [1], expiry: nil)]),
            FeedChange(position: 2, operations: [.set(key: y, value: [1], expiry: nil)]),
            FeedChange(position: 3, operations: [.set(key: x, value: [2], expiry: 60)]),
            FeedChange(position: 4, operations: [.delete(key: y)]),
            FeedChange(position: 5, operations: [.set(key: x, value: [3], expiry: nil)]),
        ])
        source.finish()
        try await within(.seconds(10), "run") { try await run.value }
        let batches = root.snapshot.batches
        XCTAssertEqual(positions(batches), [[0, 5]])
        XCTAssertEqual(batches.first?.operations, [.delete(key: y), .set(key: x, value: [3], expiry: nil)])
        XCTAssertEqual(root.snapshot.values, [x: [3]])
    }

    // MARK: shutdown

    func testGracefulShutdownFlushesThePendingBatchThenReturns() async throws {
        let source = ScriptedSource(), root = ScriptedRoot()
        let consumer = consumer(source, root)
        try await testGracefulShutdown { trigger in
            let run = start(consumer)
            source.send((1...3).map { change($0) })
            try await waitFor("three changes read") {
                let s = source.snapshot
                return s.delivered.count == 3 && s.delivering == nil
            }
            XCTAssertEqual(root.snapshot.batches, [], "below the caps, before the timer: nothing sent yet")
            trigger.triggerGracefulShutdown()
            try await within(.seconds(10), "run after shutdown") { try await run.value }
        }
        XCTAssertEqual(positions(root.snapshot.batches), [[0, 3]])
        XCTAssertEqual(root.snapshot.checkpoints[sid], 3)
        XCTAssertEqual(consumer.status.checkpoint, 3)
        XCTAssertFalse(consumer.status.finished, "a shutdown is not the end of the source")
    }

    // MARK: back-pressure

    /// With the root holding batches, the source's delivery does not return: the consumer
    /// reads one batch ahead of the root and no further.
    func testSlowRootStopsTheReading() async throws {
        let source = ScriptedSource(), root = ScriptedRoot()
        let run = start(consumer(source, root, maxOps: 4))
        try await waitFor("the checkpoint read") { root.snapshot.checkpointReads == 1 }
        root.holdBatches()
        source.send((1...20).map { change($0) })
        try await waitFor("a batch held by the root") { root.snapshot.heldBatches == 1 }
        XCTAssertEqual(source.snapshot.delivered, [1, 2, 3], "change 4 filled the batch; its delivery waits for the root")
        XCTAssertEqual(source.snapshot.delivering, 4)
        root.releaseBatches()
        source.finish()
        try await within(.seconds(10), "run") { try await run.value }
        XCTAssertEqual(positions(root.snapshot.batches), [[0, 4], [4, 8], [8, 12], [12, 16], [16, 20]])
        XCTAssertEqual(root.snapshot.writes.values.sorted(), Array(repeating: 1, count: 20), "each change applied once")
    }

    /// A root that answers slowly, a timer that fires often: at every delivery the changes
    /// read but not yet applied by the root stay within two batches.
    func testChangesHeldStayWithinTwoBatches() async throws {
        try await changesHeldStayWithinTwoBatches(inFlight: 1)
    }

    /// At every delivery the changes read and not yet applied stay within two batches (one
    /// in flight and one filling, or two in flight while the source waits), and each batch
    /// goes out once, in order.
    func changesHeldStayWithinTwoBatches(inFlight: Int) async throws {
        let maxOps = 8
        let root = ScriptedRoot()
        let widest = NIOLockedValueBox<UInt64>(0)
        let source = ScriptedSource { change in
            let applied = root.snapshot.checkpoints["test-source"] ?? 0
            widest.withLockedValue { $0 = max($0, change.position - 1 - applied) }
        }
        let run = start(consumer(source, root, interval: .milliseconds(1), maxOps: maxOps, inFlight: inFlight))
        source.send((1...400).map { change($0) })
        source.finish()
        try await within(.seconds(30), "run") { try await run.value }
        XCTAssertEqual(root.snapshot.checkpoints[sid], 400)
        XCTAssertEqual(root.snapshot.writes.count, 400)
        XCTAssertEqual(Set(root.snapshot.writes.values), [1], "each change applied once")
        XCTAssertLessThanOrEqual(widest.withLockedValue { $0 }, UInt64(2 * maxOps))
        XCTAssertTrue(root.snapshot.batches.allSatisfy { $0.operations.count <= maxOps })
        let b = root.snapshot.batches
        XCTAssertEqual(zip(b, b.dropFirst()).filter { $0.new != $1.expected }.count, 0, "each batch chained on the one before")
    }

    /// While the root is down the reading stops at one batch; when it is back everything
    /// read is applied, once and in order.
    func testRootDownStopsTheReadingUntilItIsBack() async throws {
        let source = ScriptedSource(), root = ScriptedRoot()
        let run = start(consumer(source, root, maxOps: 4))
        try await waitFor("the checkpoint read") { root.snapshot.checkpointReads == 1 }
        root.goDown()
        source.send((1...12).map { change($0) })
        // Three refused attempts: the writer has been retrying with backoff a while.
        try await waitFor("three refused attempts") { root.snapshot.failedCalls >= 3 }
        XCTAssertEqual(source.snapshot.delivered, [1, 2, 3])
        XCTAssertEqual(source.snapshot.delivering, 4)
        XCTAssertEqual(root.snapshot.batches, [])
        root.comeUp()
        source.finish()
        try await within(.seconds(20), "run") { try await run.value }
        XCTAssertEqual(positions(root.snapshot.batches), [[0, 4], [4, 8], [8, 12]])
        XCTAssertEqual(root.snapshot.checkpoints[sid], 12)
    }

    // MARK: conflicts

    /// Another writer applied changes 1…2 after the checkpoint was read: the batch 1…4
    /// conflicts at 2, changes 1 and 2 are dropped, 3 and 4 go in the next batch.
    func testConflictInsideTheBufferDropsWhatWasAppliedAndKeepsTheRest() async throws {
        let source = ScriptedSource(), root = ScriptedRoot()
        let run = start(consumer(source, root, maxOps: 4))
        try await waitFor("the checkpoint read") { root.snapshot.checkpointReads == 1 }
        root.applyElsewhere(sourceID: sid, from: 1, through: 2)
        source.send((1...8).map { change($0) })
        source.finish()
        try await within(.seconds(10), "run") { try await run.value }
        let batches = root.snapshot.batches
        XCTAssertEqual(positions(batches), [[0, 4], [2, 6], [6, 8]])
        XCTAssertEqual(batches.map(\.answer), [.conflict(current: 2), .applied(logIndex: 1, kept: 4, dropped: 0),
                                                .applied(logIndex: 2, kept: 2, dropped: 0)])
        XCTAssertEqual(batches[1].operations.map(\.key), (3...6).map { key($0) }, "never re-sent 1 and 2, never skipped 3 and 4")
        XCTAssertEqual(root.snapshot.values[key(1)], Array("other".utf8))
        XCTAssertEqual(root.snapshot.values[key(3)], Array("bridge".utf8))
        XCTAssertEqual(root.snapshot.writes.keys.sorted { $0.lexicographicallyPrecedes($1) }, (3...8).map { key($0) }.sorted { $0.lexicographicallyPrecedes($1) })
        XCTAssertEqual(root.snapshot.checkpoints[sid], 8)
    }

    /// Another writer is ahead of everything buffered: the buffer is dropped and changes
    /// the source still delivers up to that point are skipped.
    func testConflictBeyondTheBufferSkipsEverythingAppliedElsewhere() async throws {
        let source = ScriptedSource(), root = ScriptedRoot()
        let run = start(consumer(source, root, maxOps: 4))
        try await waitFor("the checkpoint read") { root.snapshot.checkpointReads == 1 }
        root.applyElsewhere(sourceID: sid, from: 1, through: 6)
        source.send((1...8).map { change($0) })
        source.finish()
        try await within(.seconds(10), "run") { try await run.value }
        let batches = root.snapshot.batches
        XCTAssertEqual(positions(batches), [[0, 4], [6, 8]])
        XCTAssertEqual(batches.first?.answer, .conflict(current: 6))
        XCTAssertEqual(batches.last?.operations.map(\.key), [key(7), key(8)])
        XCTAssertEqual(root.snapshot.checkpoints[sid], 8)
    }

    /// The root applied a batch but its answer was lost: the writer reconnects, sends the
    /// same batch, gets `conflict` at its own end, and nothing is applied twice.
    func testLostAnswerIsNotAppliedTwice() async throws {
        let source = ScriptedSource(), root = ScriptedRoot()
        root.state.withLockedValue { $0.loseNextAnswer = true }
        let run = start(consumer(source, root, maxOps: 4))
        source.send((1...8).map { change($0) })
        source.finish()
        try await within(.seconds(10), "run") { try await run.value }
        let batches = root.snapshot.batches
        XCTAssertEqual(positions(batches), [[0, 4], [0, 4], [4, 8]])
        XCTAssertEqual(batches[1].answer, .conflict(current: 4))
        XCTAssertEqual(Set(root.snapshot.writes.values), [1])
        XCTAssertEqual(root.snapshot.writes.count, 8)
    }

    func testRootCheckpointGoingBackStopsTheBridge() async throws {
        let source = ScriptedSource(), root = ScriptedRoot()
        root.setCheckpoint(sid, 5)
        let run = start(consumer(source, root, maxOps: 2))
        try await waitFor("the checkpoint read") { root.snapshot.checkpointReads == 1 }
        root.setCheckpoint(sid, 3)
        source.send((6...7).map { change($0) })
        do {
            try await within(.seconds(10), "run") { try await run.value }
            XCTFail("the bridge went on with a root whose checkpoint went back")
        } catch let FeedError.stop(why) {
            XCTAssertTrue(why.contains("went back from 5 to 3"), why)
        }
        // The batch, and the final flush's try of the same batch, both refused; nothing applied.
        XCTAssertFalse(root.snapshot.batches.isEmpty)
        XCTAssertTrue(root.snapshot.batches.allSatisfy { [$0.expected, $0.new] == [5, 7] && $0.answer == .conflict(current: 3) })
        XCTAssertEqual(root.snapshot.writes, [:])
        XCTAssertEqual(root.snapshot.checkpoints[sid], 3)
    }

    // MARK: two batches in flight

    /// With two batches in flight the second is sent while the root still holds the first
    /// (its expected position is the first's new one); the source reads until a third batch
    /// is full and waits there. Released, every change is applied once, in order.
    func testSecondBatchIsSentBeforeTheFirstIsAnswered() async throws {
        let source = ScriptedSource(), root = ScriptedRoot()
        let run = start(consumer(source, root, maxOps: 4, inFlight: 2))
        try await waitFor("the checkpoint read") { root.snapshot.checkpointReads == 1 }
        root.holdBatches()
        source.send((1...20).map { change($0) })
        try await waitFor("two batches sent, the first held") { root.snapshot.startedBatches == 2 && root.snapshot.heldBatches == 1 }
        try await waitFor("the source waiting with two batches in flight") { source.snapshot.delivering == 8 }
        XCTAssertEqual(source.snapshot.delivered, Array(1...7), "change 8 filled the second batch; its delivery waits for the first's answer")
        XCTAssertEqual(root.snapshot.batches, [], "nothing answered while the root holds the first batch")
        root.releaseBatches()
        source.finish()
        try await within(.seconds(10), "run") { try await run.value }
        XCTAssertEqual(positions(root.snapshot.batches), [[0, 4], [4, 8], [8, 12], [12, 16], [16, 20]])
        XCTAssertTrue(root.snapshot.batches.allSatisfy { if case .applied = $0.answer { true } else { false } })
        XCTAssertEqual(root.snapshot.writes.values.sorted(), Array(repeating: 1, count: 20), "each change applied once")
    }

    /// Two in flight, another writer ahead inside the first: the first conflicts, the second
    /// (chained on the first's end) conflicts too and is harmless; the rest is sent again
    /// from the root's checkpoint, never re-sending what the other writer applied.
    func testConflictWithTwoInFlightResendsFromTheRootsCheckpoint() async throws {
        let source = ScriptedSource(), root = ScriptedRoot()
        let run = start(consumer(source, root, maxOps: 4, inFlight: 2))
        try await waitFor("the checkpoint read") { root.snapshot.checkpointReads == 1 }
        root.applyElsewhere(sourceID: sid, from: 1, through: 2)
        root.holdBatches()
        source.send((1...12).map { change($0) })
        try await waitFor("two batches sent, the first held") { root.snapshot.startedBatches == 2 && root.snapshot.heldBatches == 1 }
        root.releaseBatches()
        source.finish()
        try await within(.seconds(10), "run") { try await run.value }
        let batches = root.snapshot.batches
        XCTAssertEqual(Array(positions(batches).prefix(2)), [[0, 4], [4, 8]])
        XCTAssertEqual(batches.prefix(2).map(\.answer), [.conflict(current: 2), .conflict(current: 2)])
        XCTAssertEqual(batches.first { if case .applied = $0.answer { true } else { false } }.map { [$0.expected, $0.new] }, [UInt64(2), 6])
        XCTAssertEqual(root.snapshot.writes.keys.sorted { $0.lexicographicallyPrecedes($1) },
                       (3...12).map { key($0) }.sorted { $0.lexicographicallyPrecedes($1) }, "1 and 2 never re-sent, nothing skipped")
        XCTAssertEqual(Set(root.snapshot.writes.values), [1])
        XCTAssertEqual(root.snapshot.checkpoints[sid], 12)
    }

    /// The connection drops after the root applied the first of two batches in flight and
    /// before either answer arrived: both outcomes are unknown; sent again from the checkpoint
    /// the writer confirmed (0), the first answers `conflict` at its own end and the rest is
    /// applied once.
    func testLostAnswersWithTwoInFlightAreNotAppliedTwice() async throws {
        let source = ScriptedSource(), root = ScriptedRoot()
        root.state.withLockedValue { $0.loseNextAnswer = true }
        let run = start(consumer(source, root, maxOps: 4, inFlight: 2))
        source.send((1...12).map { change($0) })
        source.finish()
        try await within(.seconds(10), "run") { try await run.value }
        let batches = root.snapshot.batches
        XCTAssertEqual(batches.first.map { [$0.expected, $0.new] }, [0, 4])
        XCTAssertTrue(batches.contains { [$0.expected, $0.new] == [0, 4] && $0.answer == .conflict(current: 4) }, "\(batches)")
        XCTAssertEqual(Set(root.snapshot.writes.values), [1], "nothing applied twice")
        XCTAssertEqual(root.snapshot.writes.count, 12, "nothing skipped")
        XCTAssertEqual(root.snapshot.checkpoints[sid], 12)
        XCTAssertGreaterThanOrEqual(root.snapshot.connectAttempts, 2, "a new connection after the lost one")
    }

    func testChangesHeldStayWithinTwoBatchesWithTwoInFlight() async throws {
        try await changesHeldStayWithinTwoBatches(inFlight: 2)
    }

    // MARK: source failures

    /// A source failure flushes what was read before it, then the source runs again from
    /// the root's checkpoint.
    func testSourceFailureResumesFromTheRootsCheckpoint() async throws {
        let source = ScriptedSource(), root = ScriptedRoot()
        let run = start(consumer(source, root))
        source.send((1...3).map { ScriptedSource.Item.event(.change(change($0))) } + [.fail(FeedError.corrupt("scripted"))])
        try await waitFor("the second run") { source.snapshot.runs.count == 2 }
        XCTAssertEqual(source.snapshot.runs, [0, 3])
        XCTAssertEqual(positions(root.snapshot.batches), [[0, 3]])
        source.send((4...5).map { change($0) })
        source.finish()
        try await within(.seconds(10), "run") { try await run.value }
        XCTAssertEqual(positions(root.snapshot.batches), [[0, 3], [3, 5]])
    }

    func testSourceStopAppliesWhatCameBeforeItThenStops() async throws {
        let source = ScriptedSource(), root = ScriptedRoot()
        let run = start(consumer(source, root))
        source.send((1...2).map { ScriptedSource.Item.event(.change(change($0))) } + [.fail(FeedError.stop("scripted stop"))])
        do {
            try await within(.seconds(10), "run") { try await run.value }
            XCTFail("a stop from the source did not stop the bridge")
        } catch let error as FeedError {
            XCTAssertEqual(error, .stop("scripted stop"))
        }
        XCTAssertEqual(positions(root.snapshot.batches), [[0, 2]])
        XCTAssertEqual(source.snapshot.runs, [0])
    }
}

extension Mutation {
    var key: [UInt8] {
        switch self {
        case let .set(key, _, _), let .delete(key): key
        case let .clearPrefix(p): p
        }
    }
}
