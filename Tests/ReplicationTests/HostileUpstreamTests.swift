import Foundation
import QSClient
import QSModel
import QSTesting
import QSWire
import XCTest

/// An upstream that lies or breaks the replication protocol (a real root behind a
/// `FrameRewriteProxy` that rewrites its frames): the replica refuses what does not hold,
/// counts it, says why, and takes the real thing once the upstream behaves.
final class HostileUpstreamTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("hostile-upstream")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    /// What the proxy does to the frames it passes, switched by the test as it runs.
    final class Script: @unchecked Sendable {
        private let lock = NSLock()
        private var steps: [(Response) -> [Response]?]
        /// Snapshot exchanges begun so far (SnapshotStart or SnapshotBegin seen).
        private var begun = 0

        /// `steps[i]` rewrites the i-th snapshot exchange (returns nil to pass a frame);
        /// exchanges past the list pass untouched.
        init(_ steps: [(Response) -> [Response]?]) { self.steps = steps }

        /// How many snapshot exchanges went through a step.
        var exchangesBroken: Int { lock.withLock { min(begun, steps.count) } }

        /// The proxy's rewrite: a snapshot exchange's frames (from its start to its end)
        /// go through the step of its turn.
        func rewrite(_ connection: Int, _ frame: Frame) -> [Frame] {
            guard let response = try? Response.decode(frame) else { return [frame] }
            return lock.withLock { () -> [Frame] in
                switch response {
                case .snapshotStart, .snapshotBegin: begun += 1
                case .snapshotChunk, .snapshotDone, .snapshotEnd: break
                default: return [frame]
                }
                guard begun >= 1, begun <= steps.count else { return [frame] }
                return steps[begun - 1](response).map { $0.map { $0.frame() } } ?? [frame]
            }
        }
    }

    /// A root holding about 4 MB (1,000 records of 4,000 bytes) and a client to it.
    func rootWith4MB() async throws -> (RootNode, QSClient) {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let w = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        let value = [UInt8](repeating: 0x5A, count: 4000)
        for b in 0..<10 {
            _ = try await w.write((0..<100).map { .set(key: Array("k\(b)-\($0)".utf8), value: value, expiry: nil) }, sourceID: "t")
        }
        return (root, w)
    }

    /// An empty replica behind a proxy breaking its first snapshot exchanges as `script`
    /// says: each is refused, counted and logged (`expected`, in order), and the snapshot
    /// the upstream sends whole afterwards is installed, the root's.
    func assertRefusedThenInstalled(_ script: Script, expected: [String]) async throws {
        try XCTSkipIf(ProcessInfo.processInfo.environment["QS_STORE_ENGINE"] == "rocksdb", "LMDB only: a RocksDB replica bootstraps once its store is open")
        let (root, w) = try await rootWith4MB()
        let proxy = try FrameRewriteProxy(upstreamPort: root.port) { script.rewrite($0, $1) }
        let replica = try ReplicaNode(data: tmp.appendingPathComponent("replica"), upstreams: [proxy.address], logDir: tmp)
        XCTAssertEqual(script.exchangesBroken, expected.count)
        let log = replica.daemon.log
        var from = log.startIndex
        for words in expected {
            let found = try XCTUnwrap(log.range(of: words, range: from..<log.endIndex), "\(words) in: \(log)")
            from = found.upperBound
        }
        XCTAssertEqual(replica.metric("qs_replica_bootstraps_refused_total"), Double(expected.count))
        XCTAssertTrue(log.contains("into=the data directory, before the store opened"), log)
        let r = try await QSClient.connect(host: "127.0.0.1", port: replica.port)
        try await waitFor("the replica at the root's head", timeout: .seconds(20), pollEvery: .milliseconds(20)) {
            (try? await r.head()) == (try? await w.head())
        }
        let (mine, theirs) = (try await dumpState(r), try await dumpState(w))
        XCTAssertTrue(mine == theirs, "the replica's records are the root's")
        await r.close()
        await w.close()
        proxy.stop()
        _ = root
    }

    /// A snapshot begun with SnapshotStart must end with SnapshotDone and the digest of
    /// the whole: an end without it (SnapshotEnd, the old exchange's end) would skip the
    /// digest check.
    func testASnapshotThatEndsWithoutItsDigestIsRefused() async throws {
        let script = Script([{ r in
            if case .snapshotDone = r { return [.snapshotEnd] }
            return nil
        }])
        try await assertRefusedThenInstalled(script, expected: ["ended without its digest (SnapshotEnd instead of SnapshotDone)"])
    }

    /// A snapshot longer than announced is refused at the first byte past it, one shorter
    /// at its end: neither is taken for progress.
    func testASnapshotLongerOrShorterThanAnnouncedIsRefused() async throws {
        func announcing(_ change: Int64) -> (Response) -> [Response]? {
            { r in
                guard case let .snapshotStart(index, hash, size, offset) = r else { return nil }
                return [.snapshotStart(index: index, hash: hash, size: UInt64(Int64(size) + change), offset: offset)]
            }
        }
        let script = Script([announcing(-(1 << 20)), announcing(1 << 20)])
        try await assertRefusedThenInstalled(script, expected: ["the snapshot goes on past the", "snapshot ended after"])
    }

    /// A snapshot announced empty is no store's: refused in words (it failed as an LMDB
    /// open's "Bad file descriptor" once its digest matched).
    func testAnEmptySnapshotIsRefusedInWords() async throws {
        let script = Script([{ r in
            switch r {
            case let .snapshotStart(index, hash, _, offset): return [.snapshotStart(index: index, hash: hash, size: 0, offset: offset)]
            case .snapshotChunk: return []
            default: return nil
            }
        }])
        try await assertRefusedThenInstalled(script, expected: ["the upstream announced an empty snapshot (0 bytes)"])
    }

    /// A heartbeat whose head is below what the replica already holds (an upstream that
    /// lost entries, or lies): the replica does not take it for "caught up, lag 0"; it
    /// leaves the upstream as behind, says so, and subscribes again once the heartbeats
    /// hold.
    func testAHeartbeatBelowTheReplicasHeadIsRefusedAsBehind() async throws {
        let (root, w) = try await rootWith4MB()
        let lying = StopFlag()
        let proxy = try FrameRewriteProxy(upstreamPort: root.port) { _, frame in
            guard lying.isSet, case let .heartbeat(_, rootTime)? = try? Response.decode(frame) else { return [frame] }
            return [Response.heartbeat(head: 1, rootTimeNs: rootTime).frame()]
        }
        let replica = try ReplicaNode(data: tmp.appendingPathComponent("replica"), upstreams: [proxy.address], logDir: tmp)
        let head = try await w.head()
        XCTAssertGreaterThan(head.index, 1)
        let r = try await QSClient.connect(host: "127.0.0.1", port: replica.port)
        try await waitFor("the replica at the root's head", timeout: .seconds(20), pollEvery: .milliseconds(20)) {
            (try? await r.head()) == head
        }
        try await waitFor("subscribed", timeout: .seconds(10), pollEvery: .milliseconds(20)) {
            replica.metric("qs_replica_subscribed") == 1
        }
        lying.set()
        try await waitFor("the lying upstream left", timeout: .seconds(10), pollEvery: .milliseconds(20)) {
            replica.metric("qs_replica_subscribed") == 0
        }
        XCTAssertTrue(replica.daemon.log.contains("upstream is behind this replica"), replica.daemon.log)
        XCTAssertTrue(replica.daemon.log.contains("below this node's \(head.index)"), replica.daemon.log)
        let ready = httpGet(port: replica.adminPort, path: "/readyz")
        XCTAssertTrue(ready?.body.contains("behind this replica") == true, "\(String(describing: ready))")
        lying.clear()
        try await waitFor("subscribed again once the heartbeats hold", timeout: .seconds(20), pollEvery: .milliseconds(20)) {
            replica.metric("qs_replica_subscribed") == 1
        }
        _ = try await w.write([.set(key: Array("after".utf8), value: [7], expiry: nil)], sourceID: "t")
        let after = try await w.head()
        try await waitFor("the write after it on the replica", timeout: .seconds(20), pollEvery: .milliseconds(20)) {
            (try? await r.head()) == after
        }
        await r.close()
        await w.close()
        proxy.stop()
    }
}
