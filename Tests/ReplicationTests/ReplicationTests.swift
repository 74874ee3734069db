import Foundation
import QSClient
import QSModel
import QSStore
import QSTesting
import QSWire
import XCTest

/// Replicas against real nodes: trees, hash-checked subscriptions, failover, bootstrap.
final class ReplicationTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("repl")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    func client(_ port: Int) async throws -> QSClient {
        try await QSClient.connect(host: "127.0.0.1", port: port)
    }

    func write(_ c: QSClient, _ n: Int, prefix: String = "k") async throws {
        for i in 0..<n {
            _ = try await c.write([.set(key: Array("\(prefix)\(i)".utf8), value: Array("v\(i)".utf8), expiry: nil)], sourceID: "t-\(prefix)")
        }
    }

    /// Waits until the node at `port` has `head`.
    func waitForHead(_ port: Int, _ head: Head, timeout: Duration = .seconds(20)) async throws {
        let c = try await client(port)
        let ok = await Harness.eventually(timeout: timeout) { (try? await c.head()) == head }
        let got = try? await c.head()
        await c.close()
        XCTAssertTrue(ok, "node on \(port) at \(String(describing: got?.index)), expected \(head.index)")
    }

    func testTreeOfThreeConvergesOnTheRootsHistory() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let w = try await client(root.port)
        try await write(w, 10)
        let a = try ReplicaNode(data: tmp.appendingPathComponent("a"), upstreams: [root.address], logDir: tmp)
        let b = try ReplicaNode(data: tmp.appendingPathComponent("b"), upstreams: [a.address], logDir: tmp)
        try await write(w, 25, prefix: "later")
        let head = try await w.head()
        try await waitForHead(a.port, head)
        try await waitForHead(b.port, head)
        let rb = try await client(b.port)
        let stateB = try await dumpState(rb)
        let stateRoot = try await dumpState(w)
        XCTAssertEqual(stateB, stateRoot)
        XCTAssertEqual(stateB.count, 35)
        _ = try await verifyLog(rb, sourceID: "t-later")
        let cpB = try await rb.checkpoint(sourceID: "t-later")
        let cpRoot = try await w.checkpoint(sourceID: "t-later")
        XCTAssertEqual(cpB, cpRoot, "checkpoints replicate")
        // Replicas take no writes.
        let r = try await rb.send(.batch(.init(sourceID: "x", expected: 0, new: 1, operations: [.delete(key: [1])])))
        guard case let .error(code, _) = r else { return XCTFail("a replica accepted a write") }
        XCTAssertEqual(code, ErrorCode.notWritable.rawValue)
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(10)) { a.metric("qs_replica_bootstraps_total") == 1 }, "an empty replica bootstraps from a snapshot")  // counted just after the head shows
        XCTAssertEqual(httpGet(port: a.adminPort, path: "/readyz")?.status, 200)
        await rb.close()
        await w.close()
    }

    /// A replica of an empty root takes at most one (empty) snapshot: it counted two, the
    /// second fetched because its head was still 0 after the first.
    func testAReplicaOfAnEmptyRootBootstrapsAtMostOnceAndFollows() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let a = try ReplicaNode(data: tmp.appendingPathComponent("a"), upstreams: [root.address], logDir: tmp)
        try await waitFor("the replica ready", timeout: .seconds(20)) { httpGet(port: a.adminPort, path: "/readyz")?.status == 200 }
        let w = try await client(root.port)
        try await write(w, 3)
        try await waitForHead(a.port, try await w.head())
        XCTAssertLessThanOrEqual(try XCTUnwrap(a.metric("qs_replica_bootstraps_total")), 1, a.daemon.log)
        await w.close()
    }

    func testAnUpstreamWithAnotherHistoryIsRefusedAndTheReplicaMovesOn() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let other = try RootNode(data: tmp.appendingPathComponent("other"), logDir: tmp)
        let w = try await client(root.port)
        let o = try await client(other.port)
        try await write(w, 5)
        try await write(o, 8, prefix: "other")  // same length and more: another history
        let aData = tmp.appendingPathComponent("a")
        var a: ReplicaNode? = try ReplicaNode(data: aData, upstreams: [root.address], logDir: tmp)
        try await waitForHead(a!.port, try await w.head())
        XCTAssertEqual(try a!.daemon.stop(), 0, "a replica stops cleanly on SIGTERM")
        a = nil
        // Restarted with the other root first in its list.
        let a2 = try ReplicaNode(data: aData, upstreams: [other.address, root.address], logDir: tmp)
        try await write(w, 3, prefix: "after")
        try await waitForHead(a2.port, try await w.head())
        XCTAssertTrue(Harness.waitUntil { (a2.metric("qs_replica_diverged_total") ?? 0) >= 1 }, a2.daemon.log)
        XCTAssertTrue(a2.daemon.log.contains("diverged"), a2.daemon.log)
        XCTAssertTrue(other.daemon.log.contains("subscriber has another history"), "the upstream logs the refusal")
        XCTAssertEqual(other.metric("qs_replication_diverged_subscribers_total"), 1)
        let ra = try await client(a2.port)
        let mixed = try await ra.get(Array("other0".utf8))
        XCTAssertNil(mixed, "never mixes histories")
        await ra.close()
        await w.close()
        await o.close()
    }

    func testIntermediateReplicaChangesUpstreamWithoutDisconnectingItsOwnReplicas() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let w = try await client(root.port)
        try await write(w, 5)
        let m = try ReplicaNode(data: tmp.appendingPathComponent("m"), upstreams: [root.address], logDir: tmp)
        try await waitForHead(m.port, try await w.head())
        let a = try ReplicaNode(data: tmp.appendingPathComponent("a"), upstreams: [m.address, root.address], logDir: tmp)
        let b = try ReplicaNode(data: tmp.appendingPathComponent("b"), upstreams: [a.address], logDir: tmp)
        try await waitForHead(b.port, try await w.head())
        XCTAssertTrue(a.daemon.log.contains("subscribing from=5 upstream=\(m.address)") || a.daemon.log.contains("upstream=\(m.address)"))
        // B's head can reach A's (by bootstrap) just before B logs its subscription.
        XCTAssertTrue(Harness.waitUntil { b.daemon.log.contains("subscribing") }, b.daemon.log)
        let subscribingBefore = try XCTUnwrap(b.metric("qs_replica_subscriptions_total"))
        // A loses its upstream.
        try m.daemon.stop(signal: SIGKILL)
        try await write(w, 7, prefix: "after")
        let head = try await w.head()
        try await waitForHead(a.port, head)
        try await waitForHead(b.port, head)
        XCTAssertTrue(a.daemon.log.contains("upstream=\(root.address)"), a.daemon.log)
        XCTAssertEqual(try XCTUnwrap(b.metric("qs_replica_subscriptions_total")), subscribingBefore, "B never re-subscribed:\n\(b.daemon.log)")
        XCTAssertEqual(try XCTUnwrap(b.metric("qs_replica_upstreams_left_total")), 0, b.daemon.log)
        XCTAssertEqual(a.metric("qs_replication_subscribers"), 1, "B stayed connected to A")
        await w.close()
    }

    func testAReplicaBehindTheRetainedLogBootstrapsThenFollows() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp, extraArgs: ["--log-retention", "5"])
        let w = try await client(root.port)
        try await write(w, 3)
        let aData = tmp.appendingPathComponent("a")
        var a: ReplicaNode? = try ReplicaNode(data: aData, upstreams: [root.address], logDir: tmp)
        try await waitForHead(a!.port, try await w.head())
        XCTAssertEqual(try a!.daemon.stop(), 0, "a replica stops cleanly on SIGTERM")
        a = nil
        try await write(w, 30, prefix: "more")
        // Wait for the root to trim past the replica's head.
        let trimmed = await Harness.eventually(timeout: .seconds(20)) { (try? await w.entries(from: 1, count: 1).first?.index ?? 0) ?? 0 > 4 }
        XCTAssertTrue(trimmed)
        let a2 = try ReplicaNode(data: aData, upstreams: [root.address], logDir: tmp)
        try await waitForHead(a2.port, try await w.head())
        XCTAssertTrue(a2.daemon.log.contains("behind what the upstream retains"), a2.daemon.log)
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(10)) { a2.metric("qs_replica_bootstraps_total") == 1 })  // counted just after the head shows
        let ra = try await client(a2.port)
        let got = try await dumpState(ra)
        let want = try await dumpState(w)
        XCTAssertEqual(got, want)
        try await write(w, 2, prefix: "tail")
        try await waitForHead(a2.port, try await w.head())
        await ra.close()
        await w.close()
    }

    func testConcurrentBootstrapsAreServedOneAtATime() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let w = try await client(root.port)
        // Some bulk so each snapshot takes a moment.
        for batch in 0..<20 {
            let ops = (0..<200).map { Mutation.set(key: Array("bulk\(batch)-\($0)".utf8), value: [UInt8](repeating: UInt8(batch), count: 2000), expiry: nil) }
            _ = try await w.write(ops, sourceID: "bulk")
        }
        let replicas = try (0..<3).map { try ReplicaNode(data: tmp.appendingPathComponent("r\($0)"), upstreams: [root.address], logDir: tmp) }
        let head = try await w.head()
        for r in replicas { try await waitForHead(r.port, head) }
        XCTAssertEqual(root.metric("qs_snapshots_served_total"), 3)
        // The root logs each request with how many waited before it; they never overlap.
        let lines = root.daemon.log.split(separator: "\n").filter { $0.contains("snapshot started") || $0.contains("snapshot sent") }
        var inFlight = 0, maxInFlight = 0
        for line in lines {
            if line.contains("snapshot sent") { inFlight -= 1 } else { inFlight += 1 }
            maxInFlight = max(maxInFlight, inFlight)
        }
        XCTAssertEqual(lines.count, 6, root.daemon.log)
        XCTAssertEqual(maxInFlight, 1, "snapshots overlapped:\n\(lines.joined(separator: "\n"))")
        await w.close()
    }

    func testAReplicaLeavesAnUpstreamWhoseRootWordIsStale() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let w = try await client(root.port)
        try await write(w, 3)
        let m = try ReplicaNode(data: tmp.appendingPathComponent("m"), upstreams: [root.address], logDir: tmp)
        let a = try ReplicaNode(data: tmp.appendingPathComponent("a"), upstreams: [m.address, root.address], logDir: tmp,
                                extraArgs: ["--stale-after", "2s"])
        try await waitForHead(a.port, try await w.head())
        // Freeze the root: M stays up and keeps heartbeating A, but its word from the root ages.
        kill(root.daemon.pid, SIGSTOP)
        let left = Harness.waitUntil(timeout: .seconds(20)) { a.daemon.log.contains("freshest word") }
        kill(root.daemon.pid, SIGCONT)
        XCTAssertTrue(left, a.daemon.log)
        XCTAssertTrue(a.daemon.log.contains("the root's freshest word through this upstream is"), a.daemon.log)
        try await write(w, 2, prefix: "after")
        try await waitForHead(a.port, try await w.head(), timeout: .seconds(30))
        await w.close()
    }
}
