import Foundation
import QSClient
import QSModel
import QSTesting
import QSWire
import XCTest

/// What a single root does by itself, done by a root cluster's members through etcd: the
/// expiry purge, and a mirror's source freshness passed on to its replicas (docs/ha.md).
final class ClusterHousekeepingTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("cluster-housekeeping")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    func member(_ name: String, etcd: EtcdCluster, _ extra: [String] = []) throws -> RootNode {
        try RootNode(data: tmp.appendingPathComponent(name), logDir: tmp,
                     extraArgs: ["--etcd", etcd.urls, "--cluster", "t", "--etcd-timeout", "3s", "--log-format", "text"] + extra)
    }

    /// The purge judges expiry by the slowest member's clock (each member's `clock/` key):
    /// with a member whose clock says an hour ago, records expired a minute ago by this
    /// member's clock stay until that member is gone; records expired two hours ago go.
    func testThePurgeJudgesExpiryByTheSlowestMembersClock() async throws {
        let etcd = try EtcdCluster(size: 1, dir: tmp, logDir: tmp)
        defer { etcd.stop() }
        let m = try member("m0", etcd: etcd, ["--expiry-purge-interval", "50ms"])
        try await waitFor("m0 ready", timeout: .seconds(20)) { m.readyz()?.status == 200 }
        let now = UInt64(Date().timeIntervalSince1970)
        let slow = (now - 3600) * 1_000_000_000
        try etcd.put("/qs/t/clock/slow-member", (0..<8).map { UInt8(truncatingIfNeeded: slow >> (56 - 8 * $0)) })
        // The member reads every clock/ key with its own clock/ write (every 2 s): two of
        // its writes after the put, and it has read the slow one.
        let put = UInt64(Date().timeIntervalSince1970 * 1e9)
        try await waitFor("the slow clock read", timeout: .seconds(10)) {
            etcd.keys("/qs/t/clock/").contains { kv in
                !kv.key.hasSuffix("slow-member") && kv.value.count == 8 && kv.value.reduce(UInt64(0)) { $0 << 8 | UInt64($1) } > put + 2_100_000_000
            }
        }
        let c = try await QSClient.connect(host: "127.0.0.1", port: m.port)
        var ops: [Mutation] = (0..<5).map { .set(key: Array("old\($0)".utf8), value: Array("x".utf8), expiry: now - 7200) }
        ops += (0..<7).map { .set(key: Array("recent\($0)".utf8), value: Array("x".utf8), expiry: now - 60) }
        _ = try await c.write(ops, sourceID: "t")
        // One purge step looks at all twelve (it scans up to ten times its batch): the five
        // go, the seven stay (by this member's clock alone all twelve would go at once).
        try await waitFor("the records expired by every clock purged, and only those", timeout: .seconds(20)) {
            m.metric("qs_expired_purged_total") == 5
        }
        XCTAssertGreaterThan(m.metric("qs_cluster_purge_clock_behind_seconds") ?? 0, 3500)
        // Gone, its skew is kept (a member left alone with a clock ahead would purge early);
        // back with its clock put right, the rest goes.
        try etcd.delete("/qs/t/clock/slow-member")
        let fixed = UInt64(Date().timeIntervalSince1970 * 1e9)
        try etcd.put("/qs/t/clock/slow-member", (0..<8).map { UInt8(truncatingIfNeeded: fixed >> (56 - 8 * $0)) })
        try await waitFor("the rest purged once the slow member's clock is right", timeout: .seconds(20)) { m.metric("qs_expired_purged_total") == 12 }
        await c.close()
    }

    /// A member whose data directory was copied from another's carries its node id: the
    /// second process to claim the id in etcd sees the first's claim renewed, takes no
    /// writes and says why (readyz, status, a metric, the log) instead of sharing the id's
    /// `applied/` key; it takes the id once the other is gone. A member restarted at once
    /// (its last run's claim still in etcd, unrenewed) is not taken for a copy.
    func testAMemberCopiedFromAnotherSaysSoAndLeavesTheNodeIDToIt() async throws {
        let etcd = try EtcdCluster(size: 1, dir: tmp, logDir: tmp)
        defer { etcd.stop() }
        let ttl = ["--etcd-applied-ttl", "10s"]
        var original = try member("m0", etcd: etcd, ttl)
        try await waitFor("m0 ready", timeout: .seconds(20)) { original.readyz()?.status == 200 }
        let c = try await QSClient.connect(host: "127.0.0.1", port: original.port)
        _ = try await c.write([.set(key: Array("k".utf8), value: Array("v".utf8), expiry: nil)], sourceID: "t")
        await c.close()
        try await waitFor("m0's claim on its node id", timeout: .seconds(20)) { etcd.keys("/qs/t/claims/").count == 1 }

        XCTAssertEqual(try original.daemon.stop(), 0)
        try FileManager.default.copyItem(at: tmp.appendingPathComponent("m0"), to: tmp.appendingPathComponent("m1"))
        // Restarted within its claim's lease: the old claim is not renewed, so not a copy.
        original = try member("m0", etcd: etcd, ttl)
        try await waitFor("m0 ready again", timeout: .seconds(20)) { original.readyz()?.status == 200 }
        try await waitFor("m0's own claim", timeout: .seconds(20)) {
            etcd.keys("/qs/t/claims/").first.map { String(decoding: $0.value, as: UTF8.self).contains("pid \(original.daemon.pid) ") } == true
        }
        let copy = try member("m1", etcd: etcd, ttl)
        // Never ready meanwhile: the claim is judged (read twice) before /readyz says 200.
        var answeredReady = false
        try await waitFor("the copy to say so", timeout: .seconds(20), pollEvery: .milliseconds(20)) {
            let r = copy.readyz()
            if r?.status == 200 { answeredReady = true }
            return r?.body.contains("another live process holds this member's node id") == true
        }
        XCTAssertFalse(answeredReady, "the copy answered ready before it was found out")
        XCTAssertEqual(copy.readyz()?.status, 503)
        XCTAssertTrue(copy.readyz()?.body.contains("pid \(original.daemon.pid) ") == true, copy.readyz()?.body ?? "")
        XCTAssertEqual(copy.metric("qs_cluster_node_id_conflict"), 1)
        XCTAssertTrue(copy.daemon.log.contains("start it again with an empty --data"), copy.daemon.log)
        let status = try Harness.run("qsctl", ["--node", copy.address, "status"])
        XCTAssertTrue(String(decoding: status.stdout, as: UTF8.self).contains("FAILING"), String(decoding: status.stdout, as: UTF8.self))
        let hello = try await QSClient.connect(host: "127.0.0.1", port: copy.port)
        let refused = try await hello.send(.hello(token: [], client: "test"))
        await hello.close()
        guard case let .error(code, _) = refused, ErrorCode(rawValue: code) == .storageError else { return XCTFail("a writer is turned away: \(refused)") }
        XCTAssertEqual(original.readyz()?.status, 200, "the first holder goes on")
        XCTAssertEqual(original.metric("qs_cluster_node_id_conflict"), 0)
        XCTAssertFalse(original.daemon.log.contains("another live process"), original.daemon.log)

        // The holder killed and restarted at once takes its own claim back (same host and
        // data directory) before the waiting copy can take the id.
        XCTAssertEqual(try original.daemon.stop(signal: SIGKILL), SIGKILL)
        original = try member("m0", etcd: etcd, ttl)
        try await waitFor("m0's restart to claim its id", timeout: .seconds(20)) {
            etcd.keys("/qs/t/claims/").first.map { String(decoding: $0.value, as: UTF8.self).contains("pid \(original.daemon.pid) ") } == true
        }
        try await waitFor("m0 ready after its restart", timeout: .seconds(20)) { original.readyz()?.status == 200 }
        XCTAssertEqual(copy.readyz()?.status, 503, "the copy is still the one told")
        XCTAssertEqual(original.metric("qs_cluster_node_id_conflict"), 0)

        XCTAssertEqual(try original.daemon.stop(), 0)
        try await waitFor("the copy to take the id once the other is gone", timeout: .seconds(30)) { copy.readyz()?.status == 200 }
        XCTAssertEqual(copy.metric("qs_cluster_node_id_conflict"), 0)
        XCTAssertTrue(copy.daemon.log.contains("takes its place again"), copy.daemon.log)
    }

    /// Three members purge at once (every 100 ms): the expired records leave every member's
    /// store through entries of `qs:expiry` committed in etcd, each record deleted once,
    /// each purge position once; records written again before the purge, and records without
    /// an expiry, stay; the members verify equal.
    func testExpiredRecordsArePurgedOnEveryMemberThroughTheCommittedLog() async throws {
        let etcd = try EtcdCluster(dir: tmp, logDir: tmp)
        defer { etcd.stop() }
        let members = try (0..<3).map { try member("m\($0)", etcd: etcd, ["--expiry-purge-interval", "100ms", "--expiry-purge-batch", "7"]) }
        for m in members {
            try await waitFor("member ready", timeout: .seconds(20)) { httpGet(port: m.adminPort, path: "/readyz")?.status == 200 }
        }
        let clients = try await members.asyncMap { try await QSClient.connect(host: "127.0.0.1", port: $0.port) }
        let soon = UInt64(Date().timeIntervalSince1970) + 2
        var ops: [Mutation] = (0..<30).map { .set(key: Array("e\($0)".utf8), value: Array("gone".utf8), expiry: soon) }
        ops += (0..<10).map { .set(key: Array("k\($0)".utf8), value: Array("kept".utf8), expiry: nil) }
        let r = try await ClusterWrites.put(clients[0], sourceID: "w", expected: 0, new: 1, operations: ops)
        if let r, case .applied = r {} else if let r { return XCTFail("\(r)") }
        // e0 is written again without an expiry through another member before it expires.
        let again = try await ClusterWrites.put(clients[1], sourceID: "w", expected: 1, new: 2,
                                                operations: [.set(key: Array("e0".utf8), value: Array("again".utf8), expiry: nil)])
        if let again, case .applied = again {} else if let again { return XCTFail("\(again)") }

        // Physically gone (a scan as of epoch second 1 shows expired records still stored).
        for c in clients {
            try await waitFor("the expired records purged", timeout: .seconds(20), pollEvery: .milliseconds(100)) {
                let page = try await c.scan(prefix: Array("e".utf8), asOf: 1)
                return page.records.count == 1
            }
        }
        let head = try await clients[0].head()
        for c in clients { try await waitFor("one head", timeout: .seconds(10)) { (try? await c.head()) == head } }
        for other in members.dropFirst() {
            let v = try Harness.run("qsctl", ["--node", members[0].address, "verify", "--against", other.address])
            XCTAssertEqual(v.status, 0, String(decoding: v.stdout + v.stderr, as: UTF8.self))
        }
        var purgePositions = [UInt64](), deleted = [String]()
        for e in try await clients[2].entries(from: 1, count: 1000) {
            let entry = try LogEntry.decode(e.bytes)
            guard entry.origin.sourceID == "qs:expiry" else { continue }
            purgePositions.append(entry.origin.position)
            for case let .delete(key) in entry.operations { deleted.append(String(decoding: key, as: UTF8.self)) }
        }
        XCTAssertEqual(purgePositions, Array(1...UInt64(purgePositions.count)), "each purge position once")
        XCTAssertEqual(deleted.sorted(), (1..<30).map { "e\($0)" }.sorted(), "each expired record deleted once")
        XCTAssertGreaterThanOrEqual(purgePositions.count, 5, "--expiry-purge-batch 7: at least five steps")
        let e0 = try await clients[2].get(Array("e0".utf8))
        XCTAssertEqual(e0?.value, Array("again".utf8))
        let kept = try await clients[2].scan(prefix: Array("k".utf8))
        XCTAssertEqual(kept.records.count, 10)
        let purged = members.compactMap { $0.metric("qs_expired_purged_total") }.reduce(0, +)
        XCTAssertEqual(purged, 29, "the members count each purged record once between them")
        for c in clients { await c.close() }
    }

    /// A cluster mirroring a legacy root through one member passes the source's freshness
    /// to every member's replicas, through etcd: a replica of the other member is fresh
    /// while the source lives, and ages once it dies, like a single mirror's replicas.
    func testReplicasOfAMirroringClusterAgeWhenTheSourceDies() async throws {
        let etcd = try EtcdCluster(dir: tmp, logDir: tmp)
        defer { etcd.stop() }
        let a = try member("a", etcd: etcd), b = try member("b", etcd: etcd)
        let legacy = try RootNode(data: tmp.appendingPathComponent("L"), logDir: tmp)
        let lc = try await QSClient.connect(host: "127.0.0.1", port: legacy.port)
        _ = try await lc.write([.set(key: Array("k".utf8), value: Array("v".utf8), expiry: nil)])
        await lc.close()
        // The mirror bridge writes to member a only; the replica follows member b.
        let mirror = try DaemonProcess("qsqsbridge", ["--source", "qs://\(legacy.address)", "--root", a.address, "--mode", "compatible",
                                                      "--batch-interval", "100ms", "--log-format", "text"], logDir: tmp)
        let bc = try await QSClient.connect(host: "127.0.0.1", port: b.port)
        try await waitFor("member b to hold L's entry", timeout: .seconds(20)) { (try? await bc.head().index) == 1 }
        let replica = try ReplicaNode(data: tmp.appendingPathComponent("R"), upstreams: [b.address], logDir: tmp)
        try await waitFor("b's replica fresh", timeout: .seconds(20), pollEvery: .milliseconds(100)) {
            (replica.metric("qs_replica_root_age_seconds") ?? 99) < 2
        }
        try legacy.daemon.stop(signal: SIGKILL)
        try await waitFor("the root age of b's replica to pass 3 s while L is dead", timeout: .seconds(15), pollEvery: .milliseconds(100)) {
            (replica.metric("qs_replica_root_age_seconds") ?? 0) > 3
        }
        let status = try JSONSerialization.jsonObject(with: Data(try await bc.status().utf8)) as? [String: Any]
        XCTAssertEqual(status?["write_role"] as? String, "mirror")
        XCTAssertGreaterThan(status?["root_age_seconds"] as? Double ?? 0, 3, "b's own status ages with L")
        try mirror.stop()
        await bc.close()
    }
}
