import Foundation
import QSClient
import QSModel
import QSStore
import QSTesting
import XCTest

/// `qsqsbridge`: compatible and batched modes, resume after SIGKILL, duplicates.
final class QSQSBridgeTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("qsqs")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    /// A source root with `n` entries of mixed operations.
    func sourceRoot(entries n: Int) async throws -> (RootNode, QSClient) {
        let src = try RootNode(data: tmp.appendingPathComponent("src"), logDir: tmp)
        let c = try await QSClient.connect(host: "127.0.0.1", port: src.port)
        for i in 0..<n {
            var ops: [Mutation] = [.set(key: Array("k\(i % 97)".utf8), value: Array("v\(i)".utf8), expiry: i % 5 == 0 ? 4_102_444_800 : nil)]
            if i % 7 == 0 { ops.append(.delete(key: Array("k\((i + 3) % 97)".utf8))) }
            _ = try await c.write(ops, sourceID: "writer")
        }
        return (src, c)
    }

    func testCompatibleModeSurvivesSIGKILLAndDuplicatesAndReproducesTheLog() async throws {
        let (src, sc) = try await sourceRoot(entries: 400)
        let target = try RootNode(data: tmp.appendingPathComponent("target"), logDir: tmp)
        let tc = try await QSClient.connect(host: "127.0.0.1", port: target.port)
        let args = ["--source", "qs://\(src.address)", "--root", target.address, "--mode", "compatible", "--batch-max-ops", "7",
                    "--log-format", "text"]
        // Kill a bridge twice mid-run, then run three at once to the end.
        for _ in 0..<2 {
            let b = try DaemonProcess("qsqsbridge", args, logDir: tmp)
            let before = try await tc.head().index
            _ = await Harness.eventually(timeout: .seconds(20), pollEvery: .milliseconds(5)) { ((try? await tc.head().index) ?? 0) > before }
            try b.stop(signal: SIGKILL)
        }
        let bridges = try (0..<3).map { _ in try DaemonProcess("qsqsbridge", args + ["--once"], logDir: tmp) }
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(60)) { bridges.allSatisfy { !$0.isRunning } })
        for b in bridges {
            b.process.waitUntilExit()
            XCTAssertEqual(b.process.terminationStatus, 0, b.log)
        }
        let sh = try await sc.head()
        let th = try await tc.head()
        XCTAssertEqual(th, sh, "same index, same chained hash")
        let se = try await sc.entries(from: 1, count: 1000)
        let te = try await tc.entries(from: 1, count: 1000)
        XCTAssertEqual(te, se, "entry for entry, byte for byte")
        let st = try await dumpState(sc), tt = try await dumpState(tc)
        XCTAssertEqual(tt, st)
        // The mirror takes no other writes.
        let r = try await tc.send(.batch(.init(sourceID: "x", expected: 0, new: 1, operations: [.delete(key: [1])])))
        guard case let .error(_, message) = r else { return XCTFail("\(r)") }
        XCTAssertTrue(message.contains("compatible"), message)
        await sc.close()
        await tc.close()
    }

    /// A compatible mirror into a root that takes writes of its own (a qsrest writing into
    /// it): every append meets a target ahead of it. That is not another mirror's work (its
    /// entries are not the source's), so the bridge stops saying so, rather than skip the
    /// source's entries forever while /readyz says "catching up". A target ahead of the
    /// source's head is told the same, not "no longer retains".
    func testCompatibleModeIntoARootOfAnotherHistoryStops() async throws {
        let (src, sc) = try await sourceRoot(entries: 400)
        let target = try RootNode(data: tmp.appendingPathComponent("target"), logDir: tmp)
        let tc = try await QSClient.connect(host: "127.0.0.1", port: target.port)
        _ = try await tc.write([.set(key: Array("own".utf8), value: [1], expiry: nil)], sourceID: "other")
        let stop = StopFlag()
        let writer = Task {
            var i = 0
            while !stop.isSet {
                i += 1
                _ = try? await tc.write([.set(key: Array("own\(i % 10)".utf8), value: Array("\(i)".utf8), expiry: nil)], sourceID: "other")
            }
        }
        let args = ["--source", "qs://\(src.address)", "--root", target.address, "--mode", "compatible", "--batch-max-ops", "7",
                    "--log-format", "text"]
        let b = try DaemonProcess("qsqsbridge", args, logDir: tmp)
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(30)) { !b.isRunning }, b.log)
        b.process.waitUntilExit()
        XCTAssertNotEqual(b.process.terminationStatus, 0, b.log)
        XCTAssertTrue(b.log.contains("another history"), b.log)
        XCTAssertFalse(b.log.contains("skipping what it applied"), "the target's own entries taken for another mirror's: \(b.log)")
        stop.set()
        await writer.value
        // Past the source's head.
        for i in 0..<400 { _ = try await tc.write([.set(key: Array("more\(i)".utf8), value: [1], expiry: nil)], sourceID: "other") }
        let ahead = try Harness.run("qsqsbridge", args)
        let said = String(decoding: ahead.stderr, as: UTF8.self)
        XCTAssertNotEqual(ahead.status, 0, said)
        XCTAssertTrue(said.contains("past") && said.contains("another history"), said)
        await sc.close()
        await tc.close()
    }

    func testBatchedModeAppliesWithCompareAndSwapOnTheSourceIndex() async throws {
        let (src, sc) = try await sourceRoot(entries: 120)
        let target = try RootNode(data: tmp.appendingPathComponent("target"), logDir: tmp)
        let tc = try await QSClient.connect(host: "127.0.0.1", port: target.port)
        _ = try await tc.write([.set(key: Array("own".utf8), value: [1], expiry: nil)], sourceID: "local")
        let r = try Harness.run("qsqsbridge", ["--source", "qs://\(src.address)", "--root", target.address, "--mode", "batched",
                                               "--source-id", "legacy", "--once"])
        XCTAssertEqual(r.status, 0, String(decoding: r.stderr, as: UTF8.self))
        let cp = try await tc.checkpoint(sourceID: "legacy")
        let srcHead = try await sc.head().index
        XCTAssertEqual(cp, srcHead)
        var want = try await dumpState(sc)
        want[Array("own".utf8)] = Record(value: [1], expiry: nil)
        let got = try await dumpState(tc)
        XCTAssertEqual(got, want)
        // Batched: fewer entries than the source, its own writes still accepted.
        let th = try await tc.head().index
        XCTAssertLessThan(th, srcHead)
        _ = try await tc.write([.set(key: Array("own2".utf8), value: [2], expiry: nil)], sourceID: "local")
        await sc.close()
        await tc.close()
    }

    /// Batched, a bridge's checkpoint is a position in its source's log under its source id,
    /// by default the source's address as written. The same source reached by another
    /// address (moved, another member of its cluster, another spelling) starts from 0 and
    /// replays the whole log over newer values: the bridge stops before writing anything,
    /// naming the ids, unless told the node is another source (then it says so and goes on).
    func testABatchedBridgeWhoseSourceIdIsNewToARootHoldingOtherQSSourcesStops() async throws {
        let (src, sc) = try await sourceRoot(entries: 20)
        let target = try RootNode(data: tmp.appendingPathComponent("target"), logDir: tmp)
        let tc = try await QSClient.connect(host: "127.0.0.1", port: target.port)
        let first = try Harness.run("qsqsbridge", ["--source", "qs://\(src.address)", "--root", target.address, "--mode", "batched", "--once"])
        XCTAssertEqual(first.status, 0, String(decoding: first.stderr, as: UTF8.self))
        XCTAssertFalse(String(decoding: first.stderr, as: UTF8.self).contains("holds other QS sources' checkpoints"))
        let head = try await tc.head()
        let stopped = try Harness.run("qsqsbridge", ["--source", "qs://localhost:\(src.port)", "--root", target.address, "--mode", "batched", "--once"])
        let err = String(decoding: stopped.stderr, as: UTF8.self)
        XCTAssertEqual(stopped.status, 1, err)
        XCTAssertTrue(err.contains("holds other QS sources' checkpoints (qs:\(src.address))") && err.contains("nothing was written")
                      && err.contains("--allow-new-source-id"), err)
        let after = try await tc.head()
        XCTAssertEqual(after, head, "the stopped bridge wrote")
        let none = try await tc.checkpoint(sourceID: "qs:localhost:\(src.port)")
        XCTAssertNil(none)
        let again = try Harness.run("qsqsbridge", ["--source", "qs://localhost:\(src.port)", "--root", target.address, "--mode", "batched", "--once",
                                                   "--allow-new-source-id"])
        XCTAssertEqual(again.status, 0, String(decoding: again.stderr, as: UTF8.self))
        let log = String(decoding: again.stderr, as: UTF8.self)
        XCTAssertTrue(log.contains("holds other QS sources' checkpoints") && log.contains("qs:\(src.address)"), log)
        await tc.close()
        // Named explicitly, the id already there carries on without a word.
        let named = try Harness.run("qsqsbridge", ["--source", "qs://localhost:\(src.port)", "--root", target.address, "--mode", "batched",
                                                   "--source-id", "qs:\(src.address)", "--once"])
        XCTAssertEqual(named.status, 0, String(decoding: named.stderr, as: UTF8.self))
        XCTAssertFalse(String(decoding: named.stderr, as: UTF8.self).contains("holds other QS sources' checkpoints"))
        await sc.close()
    }

    /// A new root holding a replay of `src`'s first `entries` entries, recorded with `qsctl
    /// record` and replayed by `qsqsbridge --mode MODE`.
    func replayedRecording(of src: RootNode, entries: Int, mode: String) throws -> RootNode {
        let file = tmp.appendingPathComponent("qs.cap")
        let rec = try Harness.run("qsctl", ["record", "--source", "qs://\(src.address)", "--out", file.path, "--from", "0", "--until-ts", "\(entries)"])
        XCTAssertEqual(rec.status, 0, String(decoding: rec.stderr, as: UTF8.self))
        let target = try RootNode(data: tmp.appendingPathComponent("target"), logDir: tmp)
        let r = try Harness.run("qsqsbridge", ["--source", "capture:\(file.path)", "--root", target.address, "--mode", mode])
        XCTAssertEqual(r.status, 0, String(decoding: r.stderr, as: UTF8.self))
        return target
    }

    /// A recording of the node replayed into the root first (record in production, replay
    /// in CI, then bridge the node itself): the node's start says its log goes over the
    /// replay's, and is not stopped.
    func testABatchedBridgeAfterAReplayOfARecordingSaysSoAndGoesOn() async throws {
        let (src, sc) = try await sourceRoot(entries: 20)
        let target = try replayedRecording(of: src, entries: 20, mode: "batched")
        let live = try Harness.run("qsqsbridge", ["--source", "qs://\(src.address)", "--root", target.address, "--mode", "batched", "--once"])
        let log = String(decoding: live.stderr, as: UTF8.self)
        XCTAssertEqual(live.status, 0, log)
        XCTAssertTrue(log.contains("holds other QS sources' checkpoints (capture:"), log)
        await sc.close()
    }

    func testARecordedQSFeedReplaysThroughQsqsbridgeEntryForEntry() async throws {
        let (src, sc) = try await sourceRoot(entries: 60)
        let target = try replayedRecording(of: src, entries: 60, mode: "compatible")
        let tc = try await QSClient.connect(host: "127.0.0.1", port: target.port)
        let th = try await tc.head()
        let sh = try await sc.head()
        XCTAssertEqual(th, sh)
        await tc.close()
        await sc.close()
    }
}

/// Damage on the wire between a source and its bridge (a byte inverted past TCP's
/// checksum, `FaultProxy.flipByte`) is caught by the source's hash chain, which the bridge
/// checks on every entry: the entry is never applied, is counted, and is fetched again,
/// so the target holds the source's records, in either mode.
final class QSQSBridgeDamageTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("qsqs-damage")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    /// A bridge in `mode` from a source holding one entry of about 100 KB (nearly all value
    /// bytes) and a small one, with one byte inverted on the wire: `toRoot` between the
    /// bridge and the target root, else between the source and the bridge. The target ends
    /// with the source's records; returns the bridge's log and the target.
    func mirrorsThroughADamagedWire(mode: String, toRoot: Bool = false) async throws -> (log: String, target: RootNode) {
        let dir = tmp.appendingPathComponent(mode + (toRoot ? "-to-root" : ""))
        let src = try RootNode(data: dir.appendingPathComponent("src"), logDir: tmp)
        let sc = try await QSClient.connect(host: "127.0.0.1", port: src.port)
        _ = try await sc.write((0..<50).map { .set(key: Array("k\($0)".utf8), value: [UInt8](repeating: 0x41, count: 2000), expiry: nil) },
                               sourceID: "writer")
        _ = try await sc.write([.set(key: Array("after".utf8), value: [1], expiry: nil)], sourceID: "writer")
        let target = try RootNode(data: dir.appendingPathComponent("target"), logDir: tmp)
        let tc = try await QSClient.connect(host: "127.0.0.1", port: target.port)
        let proxy = try FaultProxy(upstreamPort: toRoot ? target.port : src.port)
        proxy.fault = toRoot ? .flipSentByte(at: 60_000) : .flipByte(at: 60_000)
        let (source, root) = toRoot ? (src.address, proxy.address) : (proxy.address, target.address)
        let r = try Harness.run("qsqsbridge", ["--source", "qs://\(source)", "--root", root, "--mode", mode,
                                               "--source-id", "legacy", "--once", "--log-format", "text"])
        let log = String(decoding: r.stderr, as: UTF8.self)
        XCTAssertEqual(r.status, 0, log)
        XCTAssertTrue(proxy.hasFlipped)
        let (got, want) = (try await dumpState(tc), try await dumpState(sc))
        XCTAssertEqual(got.count, want.count)
        XCTAssertTrue(got == want, "the target holds the source's records, none damaged")
        proxy.close()
        await sc.close()
        await tc.close()
        return (log, target)
    }

    func testBatchedModeRefusesAnEntryDamagedOnTheWayAndFetchesItAgain() async throws {
        let (log, _) = try await mirrorsThroughADamagedWire(mode: "batched")
        XCTAssertTrue(log.contains("the chained hash does not continue the log") && log.contains("fetched again from the checkpoint"), log)
    }

    func testCompatibleModeRefusesAnEntryDamagedOnTheWayAndFetchesItAgain() async throws {
        let (log, _) = try await mirrorsThroughADamagedWire(mode: "compatible")
        XCTAssertTrue(log.contains("the chained hash does not continue the log") && log.contains("fetched again from the checkpoint"), log)
    }

    /// The same damage between the bridge and its root: the writes go in checked frames
    /// (`CheckedFrames`), so the root refuses the damaged one (`damaged`, counted in
    /// qs_damaged_frames_total) before it applies anything, and the bridge sends it again.
    /// Batched, the damaged batch was applied as it came; compatible, the root refused the
    /// appended entry as another history and the bridge stopped.
    func testABatchDamagedOnTheWayToTheRootIsRefusedAndSentAgain() async throws {
        for mode in ["batched", "compatible"] {
            let (log, target) = try await mirrorsThroughADamagedWire(mode: mode, toRoot: true)
            XCTAssertTrue(log.contains("damaged on the way"), log)
            XCTAssertEqual(target.metric("qs_damaged_frames_total"), 1, mode)
        }
    }
}
