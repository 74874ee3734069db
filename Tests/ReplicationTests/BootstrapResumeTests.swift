import Foundation
import QSClient
import QSModel
import QSTesting
import XCTest

/// An empty replica's bootstrap cut off half-way (a reset on the wire, `FaultProxy`):
/// it resumes from the bytes it holds when the upstream's snapshot is the same, and starts
/// over cleanly, saying so, when the upstream moved on. Either way the store it installs
/// is the root's.
final class BootstrapResumeTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("repl-resume")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    /// A root holding about 8 MB, a proxy letting 2 MB/s through, and an empty replica
    /// behind it whose bootstrap is reset once about 3 MB have passed; `whileCut` runs
    /// while the wire is down. Returns the replica (ready once its bootstrap is installed),
    /// the bytes that passed after the wire came back, and the snapshot's size.
    func bootstrapCutOnce(whileCut: (QSClient, FaultProxy) async throws -> Void) async throws
        -> (root: RootNode, replica: ReplicaNode, w: QSClient, afterCut: Int, size: Int) {
        let (root, w) = try await rootWith8MB()
        let proxy = try FaultProxy(upstreamPort: root.port)
        proxy.fault = .bandwidth(bytesPerSecond: 2 << 20)
        let data = tmp.appendingPathComponent("replica"), logDir = tmp!, upstream = proxy.address
        // The replica's ready file appears once its bootstrap is installed: start it aside.
        let starting = Task.detached { try ReplicaNode(data: data, upstreams: [upstream], logDir: logDir) }
        try await waitFor("3 MB of the snapshot through the proxy", timeout: .seconds(20), pollEvery: .milliseconds(5)) {
            proxy.bytesForwarded > 3 << 20
        }
        proxy.fault = .reset
        try await waitFor("the cut connection closed", timeout: .seconds(5), pollEvery: .milliseconds(5)) { proxy.openConnections == 0 }
        try await whileCut(w, proxy)
        let atCut = proxy.bytesForwarded
        proxy.fault = .none
        let replica = try await starting.value
        let afterCut = proxy.bytesForwarded - atCut
        proxy.close()
        let installed = try XCTUnwrap(replica.daemon.log.split(separator: "\n").first { $0.contains("bootstrap installed") },
                                      replica.daemon.log)
        let size = try XCTUnwrap(installed.split(separator: " ").first { $0.hasPrefix("bytes=") }.flatMap { Int($0.dropFirst(6)) },
                                 String(installed))
        return (root, replica, w, afterCut, size)
    }

    /// A root holding about 8 MB (2,000 records of 4,000 bytes) and a client to it.
    func rootWith8MB() async throws -> (RootNode, QSClient) {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let w = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        let value = [UInt8](repeating: 0x5A, count: 4000)
        for b in 0..<20 {
            _ = try await w.write((0..<100).map { .set(key: Array("k\(b)-\($0)".utf8), value: value, expiry: nil) }, sourceID: "t")
        }
        return (root, w)
    }

    func assertSameAsRoot(_ w: QSClient, _ replica: ReplicaNode) async throws {
        let r = try await QSClient.connect(host: "127.0.0.1", port: replica.port)
        try await waitFor("the replica at the root's head", timeout: .seconds(20), pollEvery: .milliseconds(20)) {
            (try? await r.head()) == (try? await w.head())
        }
        let (mine, theirs) = (try await dumpState(r), try await dumpState(w))
        XCTAssertEqual(mine.count, theirs.count)
        XCTAssertTrue(mine == theirs, "the replica's records are the root's")
        await r.close()
    }

    func testABootstrapResetHalfWayResumesFromTheBytesItHolds() async throws {
        try XCTSkipIf(ProcessInfo.processInfo.environment["QS_STORE_ENGINE"] == "rocksdb", "LMDB only: a RocksDB upstream's snapshots are not resumable")
        let (root, replica, w, afterCut, size) = try await bootstrapCutOnce { _, _ in }
        XCTAssertGreaterThan(size, 6 << 20)
        XCTAssertLessThan(afterCut, size - (2 << 20), "after the cut only the rest of the snapshot was fetched")
        XCTAssertEqual(replica.metric("qs_replica_bootstraps_resumed_total"), 1)
        XCTAssertEqual(root.metric("qs_snapshot_resumes_total"), 1)
        XCTAssertTrue(replica.daemon.log.contains("snapshot resumed"), replica.daemon.log)
        try await assertSameAsRoot(w, replica)
        await w.close()
    }

    /// An upstream that refuses connections for a while (a root restarting) after a cut:
    /// every attempt meanwhile fails before the snapshot starts. The bytes held are kept
    /// (they were deleted by the first such attempt) and the empty replica keeps asking
    /// (it gave up after about a second and opened its empty store, whose follower then
    /// fetched the whole snapshot again the slow way), then resumes and installs it before
    /// its store opens.
    func testABootstrapResumesAfterItsUpstreamRefusedConnectionsForAWhile() async throws {
        try XCTSkipIf(ProcessInfo.processInfo.environment["QS_STORE_ENGINE"] == "rocksdb", "LMDB only: a RocksDB upstream's snapshots are not resumable")
        let (root, replica, w, afterCut, size) = try await bootstrapCutOnce { _, proxy in
            // Refused (each connection closed as accepted) across several of the replica's tries.
            let before = proxy.connectionsAccepted
            try await waitFor("five connections refused", timeout: .seconds(30), pollEvery: .milliseconds(20)) {
                proxy.connectionsAccepted >= before + 5
            }
        }
        XCTAssertLessThan(afterCut, size - (2 << 20), "after the outage only the rest of the snapshot was fetched")
        XCTAssertEqual(replica.metric("qs_replica_bootstraps_resumed_total"), 1)
        XCTAssertEqual(root.metric("qs_snapshot_resumes_total"), 1)
        XCTAssertTrue(replica.daemon.log.contains("into=the data directory, before the store opened"), replica.daemon.log)
        try await assertSameAsRoot(w, replica)
        await w.close()
    }

    func testABootstrapWhoseUpstreamMovedOnStartsOverCleanly() async throws {
        try XCTSkipIf(ProcessInfo.processInfo.environment["QS_STORE_ENGINE"] == "rocksdb", "LMDB only: a RocksDB upstream's snapshots are not resumable")
        let (root, replica, w, afterCut, size) = try await bootstrapCutOnce { w, _ in
            _ = try await w.write([.set(key: Array("written-while-cut".utf8), value: [1], expiry: nil)], sourceID: "t")
        }
        XCTAssertGreaterThanOrEqual(afterCut, size, "the whole new snapshot was fetched")
        XCTAssertEqual(root.metric("qs_snapshot_resumes_refused_total"), 1)
        XCTAssertEqual(replica.metric("qs_replica_bootstraps_resumed_total"), 0)
        XCTAssertTrue(replica.daemon.log.contains("cannot resume the one held: starting over"), replica.daemon.log)
        try await assertSameAsRoot(w, replica)
        let r = try await QSClient.connect(host: "127.0.0.1", port: replica.port)
        let written = try await r.get(Array("written-while-cut".utf8))
        XCTAssertEqual(written?.value, [1])
        await r.close()
        await w.close()
    }

    /// A snapshot damaged on the wire (one byte inverted, past TCP's checksum) does not
    /// have the digest its sender announced, computed as its bytes arrived: the empty
    /// replica refuses it in words, counts it, deletes it and fetches it again, and the
    /// store it installs is the root's.
    func testASnapshotWithAByteFlippedInTransitIsRefusedCountedAndFetchedAgain() async throws {
        try XCTSkipIf(ProcessInfo.processInfo.environment["QS_STORE_ENGINE"] == "rocksdb", "LMDB only: a RocksDB replica bootstraps once its store is open")
        let (root, w) = try await rootWith8MB()
        let proxy = try FaultProxy(upstreamPort: root.port)
        // Inside the fourth 1 MiB chunk's bytes, past the frames' headers.
        proxy.fault = .flipByte(at: (3 << 20) + 4096)
        let replica = try ReplicaNode(data: tmp.appendingPathComponent("replica"), upstreams: [proxy.address], logDir: tmp)
        XCTAssertTrue(proxy.hasFlipped)
        XCTAssertEqual(replica.metric("qs_replica_bootstraps_refused_total"), 1)
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(10)) { replica.metric("qs_replica_bootstraps_total") == 1 })  // counted just after the head shows
        XCTAssertTrue(replica.daemon.log.contains("does not have the digest its sender announced: it was not installed"), replica.daemon.log)
        XCTAssertTrue(replica.daemon.log.contains("it was deleted and is fetched again"), replica.daemon.log)
        try await assertSameAsRoot(w, replica)
        proxy.close()
        await w.close()
    }

    /// While an empty replica bootstraps into its data directory (its store not open, its
    /// read and write ports not up), its admin server already answers: `/healthz` 200,
    /// `/readyz` 503 saying how far the bootstrap is, `/metrics` counting the bytes, actions
    /// refused with the reason; no ready file until every listener is up. SIGTERM during
    /// the bootstrap stops the node cleanly, keeping what arrived, and the next start
    /// resumes it.
    func testAnEmptyReplicaSaysHowFarItsBootstrapIsAndStopsCleanlyDuringIt() async throws {
        try XCTSkipIf(ProcessInfo.processInfo.environment["QS_STORE_ENGINE"] == "rocksdb", "LMDB only: a RocksDB replica bootstraps once its store is open")
        let (root, w) = try await rootWith8MB()
        let proxy = try FaultProxy(upstreamPort: root.port)
        proxy.fault = .blackhole
        let data = tmp.appendingPathComponent("replica"), socket = tmp.appendingPathComponent("admin.sock").path
        let readyFile = tmp.appendingPathComponent("replica.ready.json").path
        let node = try DaemonProcess("qsnode", ["--role", "replica", "--data", data.path, "--listen", "127.0.0.1:0", "--upstream", proxy.address,
                                                "--admin", "unix:" + socket, "--ready-file", readyFile, "--log-format", "text"], logDir: tmp)
        func get(_ path: String) -> (status: Int, body: String)? { httpRequest(unixPath: socket, path: path) }
        try await waitFor("the admin server answering while the replica asks for its snapshot", timeout: .seconds(15), pollEvery: .milliseconds(20)) {
            guard let r = get("/readyz") else { return false }
            return r.status == 503 && r.body.contains("bootstrapping the empty store from \(proxy.address): asking for a snapshot")
        }
        XCTAssertEqual(get("/healthz")?.status, 200)
        XCTAssertFalse(FileManager.default.fileExists(atPath: readyFile), "no ready file while nothing but the admin port is up")
        let moved = httpRequest(unixPath: socket, method: "POST", path: "/upstream", body: Array("127.0.0.1:1".utf8))
        XCTAssertEqual(moved?.status, 400)
        XCTAssertTrue(moved?.body.contains("not available while the empty store bootstraps") ?? false, moved?.body ?? "no answer")

        proxy.fault = .bandwidth(bytesPerSecond: 2 << 20)
        var detail = ""
        let progressing = await Harness.eventually(timeout: .seconds(15), pollEvery: .milliseconds(20)) {
            guard let r = get("/readyz"), r.status == 503, let m = get("/metrics") else { return false }
            detail = r.body
            return r.body.range(of: #"[0-9.]+ of [0-9.]+ MB \([0-9]+ %\)"#, options: .regularExpression) != nil
                && (metricValue(in: m.body, "qs_replica_bootstrap_bytes_received_total") ?? 0) > Double(1 << 20)
        }
        XCTAssertTrue(progressing, "/readyz and /metrics show the bootstrap's progress; /readyz said: \(detail); log:\n\(node.log)")
        XCTAssertTrue(detail.contains("reads and writes start once it is installed"), detail)
        XCTAssertFalse(FileManager.default.fileExists(atPath: readyFile))

        XCTAssertEqual(try node.stop(), 0, "SIGTERM during the bootstrap is a clean stop: \(node.log)")
        XCTAssertTrue(node.log.contains("stopped during the bootstrap of the empty store"), node.log)
        XCTAssertNil(get("/healthz"), "the admin server stopped with the node")

        proxy.fault = .none
        let replica = try ReplicaNode(data: data, upstreams: [proxy.address], logDir: tmp)
        XCTAssertEqual(replica.metric("qs_replica_bootstraps_resumed_total"), 1, replica.daemon.log)
        try await waitFor("the resumed replica ready", timeout: .seconds(15), pollEvery: .milliseconds(20)) {
            httpGet(port: replica.adminPort, path: "/readyz")?.status == 200
        }
        try await assertSameAsRoot(w, replica)
        proxy.close()
        await w.close()
    }
}
