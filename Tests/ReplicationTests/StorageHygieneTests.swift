import Foundation
import QSClient
import QSModel
import QSStore
import QSTesting
import XCTest

/// Expired records purged as logged deletes on every node; the map's usage as metrics;
/// snapshot staging outside the data directory.
final class StorageHygieneTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("hygiene")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    func testExpiredRecordsArePurgedAsLoggedDeletesOnRootAndReplica() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp,
                                extraArgs: ["--expiry-purge-interval", "100ms", "--expiry-purge-batch", "2"])
        let staging = tmp.appendingPathComponent("staging")
        let replica = try ReplicaNode(data: tmp.appendingPathComponent("replica"), upstreams: [root.address], logDir: tmp,
                                      extraArgs: ["--staging-dir", staging.path])
        let c = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        let soon = wallClockSeconds() + 2
        var ops = [Mutation]()
        for i in 0..<5 { ops.append(.set(key: Array("short\(i)".utf8), value: Array("v".utf8), expiry: soon)) }
        ops.append(.set(key: Array("lasting".utf8), value: Array("v".utf8), expiry: soon + 3600))
        ops.append(.set(key: Array("forever".utf8), value: Array("v".utf8), expiry: nil))
        _ = try await c.write(ops, sourceID: "t")

        let purged = await Harness.eventually(timeout: .seconds(30)) { root.metric("qs_expired_purged_total") == 5 }
        XCTAssertTrue(purged, "five expired records purged; root log:\n\(root.daemon.log)")
        let head = try await c.head()
        let entries = try await c.entries(from: 2, count: 100)
        let purges = try entries.map { try LogEntry.decode($0.bytes) }
        XCTAssertEqual(Set(purges.map(\.origin.sourceID)), ["qs:expiry"])
        XCTAssertEqual(purges.count, 3, "at most --expiry-purge-batch deletes an entry: 2 + 2 + 1")
        XCTAssertEqual(purges.flatMap(\.operations).compactMap { op -> String? in
            if case let .delete(k) = op { return String(decoding: k, as: UTF8.self) } else { return nil }
        }.sorted(), (0..<5).map { "short\($0)" })
        let cp = try await c.checkpoint(sourceID: "qs:expiry")
        XCTAssertEqual(cp, 3)
        await c.close()

        // The replica applied the same deletes: the same head, and the records gone from its store.
        let followed = await Harness.eventually(timeout: .seconds(15)) { replica.metric("qs_replica_head_index") == Double(head.index) }
        XCTAssertTrue(followed)
        let copy = try Store(directory: replica.data.path, readOnly: true)
        let stored = try await copy.recordCount()
        XCTAssertEqual(stored, 2, "only lasting and forever remain on the replica's disk")
        let v = try Harness.run("qsctl", ["--node", replica.address, "verify", "--against", root.address])
        XCTAssertEqual(v.status, 0, String(decoding: v.stderr, as: UTF8.self))
        XCTAssertEqual(replica.metric("qs_expired_purged_total") ?? 0, 0, "replicas do not purge on their own")
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: staging.path)
        XCTAssertEqual(leftovers, [], "the bootstrap was staged in --staging-dir and removed")
    }

    func testMapUsageGaugesArePresentAndSane() throws {
        try XCTSkipIf(ProcessInfo.processInfo.environment["QS_STORE_ENGINE"] == "rocksdb", "LMDB only: the map gauges are LMDB's")
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp, extraArgs: ["--map-size", "64MiB"])
        XCTAssertTrue(Harness.waitUntil { root.metric("qs_store_map_size_bytes") == Double(64 << 20) },
                      "map size \(String(describing: root.metric("qs_store_map_size_bytes")))")
        let used = root.metric("qs_store_map_used_bytes") ?? 0
        XCTAssertGreaterThan(used, 0)
        XCTAssertLessThan(used, Double(64 << 20))
        let before = used
        let big = String(repeating: "x", count: 100_000)
        for i in 0..<20 {
            XCTAssertEqual(try Harness.run("qsctl", ["--node", root.address, "put", "big\(i)", big]).status, 0)
        }
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(15)) { (root.metric("qs_store_map_used_bytes") ?? 0) >= before + 2_000_000 },
                      "2 MB written show in the gauge: \(String(describing: root.metric("qs_store_map_used_bytes")))")
    }
}
