import QSClient
import QSFeed
import QSModel
import QSNet
import QSTesting
import QSWire
import NIOConcurrencyHelpers
import XCTest

/// The root writer against a scripted root: what it retries, what stops the bridge.
final class RootWriterTests: XCTestCase {
    /// A checkpoint call in flight; should a wait in the test fail, it does not outlive it.
    func checkpointCall(_ writer: RootWriter) -> Task<UInt64?, any Error> {
        let call = Task { try await writer.checkpoint(sourceID: "s") }
        addTeardownBlock {
            call.cancel()
            _ = try? await call.value
        }
        return call
    }

    func testRetriesWhileTheRootIsDownThenAnswers() async throws {
        let root = ScriptedRoot()
        root.setCheckpoint("s", 42)
        root.goDown()
        let writer = root.writer()
        let call = checkpointCall(writer)
        try await waitFor("two refused attempts") { root.snapshot.failedCalls >= 2 }
        root.comeUp()
        let checkpoint = try await within(.seconds(10), "checkpoint") { try await call.value }
        XCTAssertEqual(checkpoint, 42)
        let connected = await writer.connected
        XCTAssertTrue(connected)
        XCTAssertGreaterThanOrEqual(root.snapshot.connectAttempts, 3)
    }

    /// A dropped connection is re-made and the call sent again on the new one.
    func testADroppedConnectionIsRemade() async throws {
        let root = ScriptedRoot()
        let writer = root.writer()
        let before = try await writer.checkpoint(sourceID: "s")
        XCTAssertEqual(before, nil)
        root.goDown()
        root.comeUp()
        let answer = try await writer.batch(sourceID: "s", expected: 0, new: 1, operations: [.delete(key: [1])])
        XCTAssertEqual(answer, .applied(logIndex: 1, kept: 1, dropped: 0))
        XCTAssertEqual(root.snapshot.connectAttempts, 2)
        XCTAssertEqual(root.snapshot.failedCalls, 1)
    }

    /// Refusals retrying cannot cure stop the bridge once a second connection gives them
    /// again: the first may be a write damaged where the node judges it before any checksum
    /// can (a large write's token or type, the frame's header).
    func testErrorsRetryingCannotCureStopTheBridge() async throws {
        for code in [ErrorCode.unauthorized, .invalidRequest, .unsupported, .malformed] {
            let root = ScriptedRoot()
            root.state.withLockedValue {
                $0.nextAnswer = .error(code: code.rawValue, message: "scripted \(code)")
                $0.nextAnswerTimes = 2
            }
            let writer = root.writer()
            do {
                _ = try await within(.seconds(10), "batch") { try await writer.batch(sourceID: "s", expected: 0, new: 1, operations: []) }
                XCTFail("\(code) did not stop the bridge")
            } catch let error as FeedError {
                XCTAssertEqual(error, .stop("root refused batch: scripted \(code)"))
            }
            XCTAssertEqual(root.snapshot.batches.count, 2, "\(code) sent again once on a new connection, then believed")
            XCTAssertEqual(root.snapshot.connectAttempts, 2)
        }
    }

    /// The same refusal once, then not: the write was damaged on the way, and is applied.
    func testARefusalGivenOnceIsSentAgainOnANewConnection() async throws {
        for code in [ErrorCode.unauthorized, .invalidRequest, .unsupported, .malformed, .frameTooLarge] {
            let root = ScriptedRoot()
            root.state.withLockedValue { $0.nextAnswer = .error(code: code.rawValue, message: "scripted \(code)") }
            let writer = root.writer()
            let answer = try await within(.seconds(10), "batch") {
                try await writer.batch(sourceID: "s", expected: 0, new: 1, operations: [.delete(key: [1])])
            }
            XCTAssertEqual(answer, .applied(logIndex: 1, kept: 1, dropped: 0), "\(code)")
            XCTAssertEqual(root.snapshot.batches.count, 2, "\(code)")
            XCTAssertEqual(root.snapshot.connectAttempts, 2, "\(code)")
        }
    }

    /// A storage error may pass (the operator frees space): the call is retried.
    func testStorageErrorsAreRetried() async throws {
        let root = ScriptedRoot()
        root.state.withLockedValue { $0.nextAnswer = .error(code: ErrorCode.storageError.rawValue, message: "scripted") }
        let writer = root.writer()
        let answer = try await within(.seconds(10), "batch") {
            try await writer.batch(sourceID: "s", expected: 0, new: 1, operations: [.delete(key: [1])])
        }
        XCTAssertEqual(answer, .applied(logIndex: 1, kept: 1, dropped: 0))
        XCTAssertEqual(root.snapshot.batches.map(\.new), [1, 1])
    }

    func testDivergedAppendStopsTheBridge() async throws {
        let root = ScriptedRoot()
        root.state.withLockedValue { $0.nextAnswer = .error(code: ErrorCode.diverged.rawValue, message: "hash differs at 3") }
        let writer = root.writer()
        do {
            _ = try await writer.append([])
            XCTFail("a diverged target did not stop the bridge")
        } catch let FeedError.stop(why) {
            XCTAssertTrue(why.hasPrefix("the target root has another history than the source: hash differs at 3") && why.contains("Mirror into an empty root"), why)
        }
    }

    func testPositionIsTheCheckpointOrTheHead() async throws {
        let root = ScriptedRoot()
        root.setCheckpoint("s", 9)
        root.state.withLockedValue { $0.headIndex = 4 }
        let writer = root.writer()
        let batched = try await writer.position(sourceID: "s", mode: .batched)
        XCTAssertEqual(batched, 9)
        let compatible = try await writer.position(sourceID: "s", mode: .compatible)
        XCTAssertEqual(compatible, 4)
    }

    /// Cancelling a call that waits for a down root ends it promptly.
    func testCancellationEndsTheRetries() async throws {
        let root = ScriptedRoot()
        root.goDown()
        let writer = root.writer()
        let call = checkpointCall(writer)
        try await waitFor("a refused attempt") { root.snapshot.failedCalls >= 1 }
        call.cancel()
        do {
            _ = try await within(.seconds(10), "cancelled call") { try await call.value }
            XCTFail("a cancelled call answered")
        } catch is CancellationError {}
    }
}

/// A root writer given several addresses (`--root A,B`): it moves on when the one in use
/// dies, says it takes no writes, or stands still while another goes ahead.
final class RootFailoverTests: XCTestCase {
    /// Starts `w`'s checkpoint read (cancelled at teardown) and waits until `root` was tried
    /// twice more while `w` stays unconnected: the writer keeps passing `root` over.
    func keepsRefusing(_ w: RootWriter, _ root: ScriptedRoot, _ what: String) async throws -> Task<UInt64?, any Error> {
        let before = root.snapshot.connectAttempts
        let call = Task { try await w.checkpoint(sourceID: "s") }
        addTeardownBlock {
            call.cancel()
            _ = try? await call.value
        }
        try await waitFor("\(what) tried twice more") { root.snapshot.connectAttempts >= before + 2 }
        XCTAssertFalse(w.connected, "\(what) was taken")
        return call
    }

    func writer(_ roots: [ScriptedRoot], staleAfter: Duration = .seconds(60), sourceID: String? = nil) -> RootWriter {
        let endpoints = roots.indices.map { Endpoint.unix(path: "root\($0)") }
        return RootWriter(endpoints: endpoints, token: [7], logger: quietLogger, metrics: RootLinkMetrics(), staleAfter: staleAfter,
                          sourceID: sourceID) { endpoint in
            guard let i = endpoints.firstIndex(of: endpoint) else { throw ClientError.connectionFailed("unknown \(endpoint)") }
            return try roots[i].connect()
        }
    }

    func testMovesToTheNextAddressWhenTheOneInUseDies() async throws {
        let a = ScriptedRoot(), b = ScriptedRoot()
        a.setCheckpoint("s", 3)
        b.setCheckpoint("s", 3)
        let w = writer([a, b])
        let first = try await w.checkpoint(sourceID: "s")
        XCTAssertEqual(first, 3)
        XCTAssertEqual(w.endpoint, .unix(path: "root0"))
        a.goDown()
        let answer = try await within(.seconds(10), "batch after failover") {
            try await w.batch(sourceID: "s", expected: 3, new: 4, operations: [.delete(key: [1])])
        }
        XCTAssertEqual(answer, .applied(logIndex: 1, kept: 1, dropped: 0))
        XCTAssertEqual(w.endpoint, .unix(path: "root1"))
        XCTAssertEqual(a.snapshot.batches.count, 0)
        XCTAssertEqual(b.snapshot.batches.map(\.new), [4])
    }

    /// A batch whose answer was lost is sent again to the next address, which holds the
    /// same checkpoint (a cluster's): it answers conflict at the batch's own position.
    func testABatchWhoseAnswerWasLostIsResolvedByTheNextAddress() async throws {
        let a = ScriptedRoot(), b = ScriptedRoot()
        let w = writer([a, b])
        _ = try await w.checkpoint(sourceID: "s")
        a.state.withLockedValue { $0.loseNextAnswer = true }
        // What the cluster committed through `a` is what `b` sees.
        b.setCheckpoint("s", 1)
        let answer = try await w.batch(sourceID: "s", expected: 0, new: 1, operations: [.delete(key: [1])])
        XCTAssertEqual(answer, .conflict(current: 1))
        XCTAssertEqual(w.endpoint, .unix(path: "root1"))
        XCTAssertEqual(a.snapshot.batches.map(\.new), [1])
        XCTAssertEqual(b.snapshot.batches.map(\.answer), [.conflict(current: 1)])
    }

    func testPassesOverAnAddressThatTakesNoWrites() async throws {
        let a = ScriptedRoot(), b = ScriptedRoot()
        a.state.withLockedValue { $0.helloAnswer = .error(code: ErrorCode.notWritable.rawValue, message: "replica") }
        let w = writer([a, b])
        _ = try await w.checkpoint(sourceID: "s")
        XCTAssertEqual(w.endpoint, .unix(path: "root1"))
        XCTAssertEqual(a.snapshot.checkpointReads, 0)
        XCTAssertEqual(b.snapshot.checkpointReads, 1)
    }

    /// An answer on the old connection processed while the writer was connecting to the
    /// next address (its checks already run against the positions known when it started)
    /// voids that choice: the address is checked again, and one behind the answer's
    /// position is passed over.
    func testAPositionConfirmedWhileConnectingIsCheckedAgainst() async throws {
        let a = ScriptedRoot(), b = ScriptedRoot()
        a.setCheckpoint("s", 3)
        b.setCheckpoint("s", 3)
        let bConnects = NIOLockedValueBox(0)
        let gate = NIOLockedValueBox<(held: Bool, waiting: CheckedContinuation<Void, Never>?)>((false, nil))
        let endpoints: [Endpoint] = [.unix(path: "root0"), .unix(path: "root1")]
        let w = RootWriter(endpoints: endpoints, token: [7], logger: quietLogger, metrics: RootLinkMetrics(), staleAfter: .seconds(60)) { endpoint in
            guard endpoint == endpoints[1] else { return try a.connect() }
            bConnects.withLockedValue { $0 += 1 }
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let held = gate.withLockedValue { g in
                    guard g.held else { return false }
                    g.waiting = c
                    return true
                }
                if !held { c.resume() }
            }
            return try b.connect()
        }
        _ = try await w.checkpoint(sourceID: "s")
        a.holdBatches()
        let sent = try await w.send("batch", .batch(.init(token: [7], sourceID: "s", expected: 3, new: 4, operations: [.delete(key: [1])])))
        try await waitFor("the batch held at a") { a.snapshot.heldBatches == 1 }
        // A call fails for the connection's sake: the writer drops it and connects to b,
        // whose connection waits at the gate.
        gate.withLockedValue { $0.held = true }
        let failures = NIOLockedValueBox(0)
        let call = Task {
            try await w.perform("probe") { c -> UInt64? in
                if failures.withLockedValue({ $0 += 1; return $0 }) == 1 { throw ClientError.connectionFailed("scripted drop") }
                return try await c.checkpoint(sourceID: "s")
            }
        }
        addTeardownBlock {
            call.cancel()
            _ = try? await call.value
        }
        try await waitFor("the connection to b waiting") { gate.withLockedValue { $0.waiting != nil } }
        // Meanwhile a applies the batch and its answer is processed: a holds 4, b only 3.
        a.releaseBatches()
        let answer = try await within(.seconds(10), "the batch's answer") { try await w.answer(sent) }
        XCTAssertEqual(answer, .applied(logIndex: 1, kept: 1, dropped: 0))
        a.goDown()
        gate.withLockedValue { g in
            g.held = false
            g.waiting?.resume()
            g.waiting = nil
        }
        try await waitFor("b checked again") { bConnects.withLockedValue { $0 } >= 2 }
        XCTAssertFalse(w.connected, "b holds s at 3, behind the 4 a answered: it must not take the writes")
    }

    /// A compatible mirror accepts hello (its mirror bridge's) but no other write: a writer
    /// of its own passes it over at once, with its head as the anchor the next address must
    /// hold; alone in --root it is retried, and taken once promoted.
    func testPassesOverACompatibleMirrorAtOnce() async throws {
        let mirror = ScriptedRoot(), next = ScriptedRoot()
        mirror.state.withLockedValue {
            $0.statusJSON = #"{"write_role":"mirror"}"#
            $0.checkpoints["s"] = 3
        }
        next.setCheckpoint("s", 3)
        let w = writer([mirror, next], sourceID: "s")
        let cp = try await w.checkpoint(sourceID: "s")
        XCTAssertEqual(cp, 3)
        XCTAssertEqual(w.endpoint, .unix(path: "root1"))
        XCTAssertEqual(mirror.snapshot.checkpointReads, 0, "nothing asked of the mirror but its status and head")

        // The only address: retried (a batch refused by a root demoted in use is too), and
        // taken once promoted; a call that asks to be refused at once (qsrest's writes) is.
        let alone = writer([mirror], sourceID: "s")
        do {
            _ = try await within(.seconds(10), "a single mirror address refused at once") {
                try await alone.perform("writes", refusedAtOnce: true) { _ in 0 }
            }
            XCTFail("a mirror took a writer's call")
        } catch let FeedError.stop(why) {
            XCTAssertTrue(why.contains("compatible mirror") && why.contains("point --root"), why)
        }
        let call = try await keepsRefusing(alone, mirror, "the mirror")
        mirror.state.withLockedValue { $0.statusJSON = #"{"write_role":"promoted"}"# }
        let promoted = try await within(.seconds(10), "checkpoint once promoted") { try await call.value }
        XCTAssertEqual(promoted, 3)
    }

    /// `--root N,L` where N is an empty compatible mirror of L and L is empty too (a new
    /// fleet, nothing written yet): nothing to compare heads with, but N's mirror bridge
    /// reads L (its hello's `source=`), so L carries N's history and is taken. A node too old
    /// to report `write_role` is told a mirror by `compatible_mirror`.
    func testTakesTheRootAnEmptyMirrorFollows() async throws {
        let mirror = ScriptedRoot(), followed = ScriptedRoot()
        mirror.state.withLockedValue {
            $0.statusJSON = #"{"compatible_mirror":true,"mirror":{"following":true,"followed_by":[{"peer":"x","client":"qsqsbridge mode=compatible source=qs://unix:root1 source-id=qs:unix:root1"}]}}"#
        }
        let w = writer([mirror, followed], sourceID: "s")
        let cp = try await within(.seconds(10), "the followed root taken") { try await w.checkpoint(sourceID: "s") }
        XCTAssertNil(cp)
        XCTAssertEqual(w.endpoint, .unix(path: "root1"))

        // A mirror that follows another root: the empty root is not known to carry it.
        let other = ScriptedRoot(), empty = ScriptedRoot()
        other.state.withLockedValue {
            $0.statusJSON = #"{"write_role":"mirror","mirror":{"following":true,"followed_by":[{"peer":"x","client":"qsqsbridge mode=compatible source=qs://10.0.0.9:7400 source-id=a"}]}}"#
        }
        let refused = writer([other, empty], sourceID: "s")
        let call = Task { try await refused.checkpoint(sourceID: "s") }
        addTeardownBlock {
            call.cancel()
            _ = try? await call.value
        }
        try await waitFor("the empty root refused") { refused.link.withLockedValue { $0.lastError ?? "" }.contains("nothing to compare with") }
        XCTAssertFalse(refused.connected)

        // A mirror that holds entries is not taken at its word: the root it names must hold
        // its head (here an empty root came up at that address), or it is not taken.
        let full = ScriptedRoot(), impostor = ScriptedRoot()
        full.state.withLockedValue {
            $0.headIndex = 3
            $0.statusJSON = #"{"write_role":"mirror","mirror":{"following":true,"followed_by":[{"peer":"x","client":"qsqsbridge mode=compatible source=qs://unix:root1 source-id=qs:unix:root1"}]}}"#
        }
        let anchored = writer([full, impostor], sourceID: "s")
        _ = try await keepsRefusing(anchored, impostor, "a root that does not hold the mirror's head")
    }

    /// qsrest's calls fail at once on a single root that takes no writes ("nothing was
    /// acknowledged"), but not after a try whose answer was lost: that try may have been
    /// applied, so the call is retried (its caller's deadline answers "outcome unknown").
    func testARefusalAfterALostAnswerIsRetriedNotCalledNothingApplied() async throws {
        let root = ScriptedRoot()
        let w = writer([root], sourceID: "s")
        let tries = NIOLockedValueBox(0)
        let call = Task {
            try await w.perform("writes", refusedAtOnce: true) { _ -> Int in
                let n = tries.withLockedValue { $0 += 1; return $0 }
                if n == 1 {
                    // Applied, the answer lost, and the root demoted before the retry.
                    root.state.withLockedValue {
                        $0.statusJSON = #"{"write_role":"mirror"}"#
                        $0.generation += 1
                    }
                    throw ClientError.connectionClosed
                }
                return n
            }
        }
        addTeardownBlock {
            call.cancel()
            _ = try? await call.value
        }
        let before = root.snapshot.connectAttempts
        try await waitFor("the demoted root refused the retry twice") { root.snapshot.connectAttempts >= before + 3 }
        root.state.withLockedValue { $0.statusJSON = #"{"write_role":"promoted"}"# }
        let n = try await within(.seconds(10), "the call once promoted") { try await call.value }
        XCTAssertEqual(n, 2)
    }

    func testLeavesAnAddressWhoseHeadStandsStillWhileAnothersMoves() async throws {
        let a = ScriptedRoot(), b = ScriptedRoot()
        a.state.withLockedValue { $0.headIndex = 5 }
        b.state.withLockedValue { $0.headIndex = 9 }
        let w = writer([a, b], staleAfter: .milliseconds(200))
        await w.keepalive(idle: .zero)
        XCTAssertEqual(w.endpoint, .unix(path: "root0"))
        try await Task.sleep(for: .milliseconds(250))
        await w.keepalive(idle: .zero)
        XCTAssertEqual(w.endpoint, .unix(path: "root1"))
        await w.keepalive(idle: .zero)
        XCTAssertTrue(w.connected)
        XCTAssertEqual(w.endpoint, .unix(path: "root1"))
    }
}

/// A writer's probe for checked frames (`CheckedFrames`) against a node older than the
/// envelope, which answers it as an unknown request type, counts it as a bad frame and
/// closes: the address is probed once, not at every connection the writer makes.
final class WriteCheckingTests: XCTestCase {
    func testANodeOlderThanTheEnvelopeIsProbedOnceNotAtEveryConnection() async throws {
        let probes = NIOLockedValueBox(0), connections = NIOLockedValueBox(0)
        let head = Response.head(Head(index: 3, hash: [UInt8](repeating: 1, count: 32), commitTimeNs: 0))
        // Closes after each answer but hello's, so every call makes a new connection.
        let old = try LoopbackPeer { fd in
            connections.withLockedValue { $0 += 1 }
            while let frame = LoopbackPeer.readFrame(fd) {
                if frame.type == CheckedFrames.tag {
                    probes.withLockedValue { $0 += 1 }
                    _ = LoopbackPeer.send(fd, frame: Response.error(.malformed, "malformed request: \(CheckedFrames.unknownToNode)").frame())
                    break
                }
                _ = LoopbackPeer.send(fd, frame: head.frame())
                if frame.type != Request.hello(token: [], client: "").frame().type { break }
            }
            close(fd)
        }
        defer { old.stop() }
        let writer = RootWriter(endpoints: [.tcp(host: "127.0.0.1", port: old.port)], token: [], logger: quietLogger, metrics: RootLinkMetrics())
        for _ in 0..<3 {
            let h = try await within(.seconds(20), "head") { try await writer.head() }
            XCTAssertEqual(h.index, 3)
        }
        XCTAssertGreaterThanOrEqual(connections.withLockedValue { $0 }, 4, "the calls made connections of their own")
        XCTAssertEqual(probes.withLockedValue { $0 }, 1, "probed once")
        await writer.close()
    }
}
