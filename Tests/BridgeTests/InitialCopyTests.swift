import Foundation
import QSClient
import QSModel
import QSTesting
import XCTest

/// `qsktbridge --initial-copy`: a KT whose old update logs are gone is migrated complete,
/// through kills, under a live workload; what cannot be copied is refused up front.
final class InitialCopyTests: XCTestCase {
    var tmp: URL!
    static let floor: UInt64 = 500_000_000_000_000_000
    /// Records in KT (nine tenths in database 0): 20,000 in `make test`; the full shape of
    /// the problem with `INITIAL_COPY_TEST_RECORDS=100000` (docs/bridge.md).
    static let records = ProcessInfo.processInfo.environment["INITIAL_COPY_TEST_RECORDS"].flatMap { Int($0) } ?? 20_000

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("copy")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    /// `count` records in `db` through set_bulk, 1,000 per call: `k<i>` → `v<i>`.
    func load(_ kt: FakeKTProcess, db: Int, count: Int, prefix: String = "k") {
        var i = 0
        while i < count {
            var p: [(String, [UInt8])] = [("DB", Array(String(db).utf8))]
            for j in i..<min(i + 1000, count) { p.append(("_\(prefix)\(j)", Array("v\(j)-\(String(repeating: "x", count: j % 50))".utf8))) }
            XCTAssertEqual(kt.rpc("set_bulk", p).status, 200)
            i += 1000
        }
    }

    func bridge(_ kt: FakeKTProcess, _ root: RootNode, _ extra: [String] = []) throws -> DaemonProcess {
        try DaemonProcess("qsktbridge", ["--root", root.address, "--source", "kt://\(kt.address)", "--db-map", "0=,1=aux/",
                                         "--source-id", "kt", "--sid", "99", "--batch-interval", "100ms", "--copy-page", "500",
                                         "--batch-max-ops", "500", "--admin", "127.0.0.1:0", "--log-format", "text"] + extra,
                          logDir: tmp, ready: true)
    }

    func testCopyOfAKTWhoseOldULogsWereRemovedSurvivesKillsUnderLoadAndVerifies() async throws {
        // Small ulog files, so the old ones can be removed as operators do.
        let kt = try FakeKTProcess(logDir: tmp, faults: ["-ulim", "65536"])
        let main = Self.records * 9 / 10, aux = Self.records - main
        load(kt, db: 0, count: main)
        load(kt, db: 1, count: aux)
        XCTAssertEqual(kt.rpc("ulog_remove", [("ts", Array("now".utf8))]).status, 200)
        let files = try FileManager.default.contentsOfDirectory(atPath: kt.ulog.path).filter { $0.hasSuffix(".ulog") }
        XCTAssertEqual(files.count, 1, "only the newest ulog file is left: the log does not reach back to the first records")

        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let client = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        // A live workload through the copy: new keys, overwrites, removes of copied keys,
        // and records that expire while the copy runs.
        let workload = KTWorkload(every: 0.005) { i in
            kt.set("live\(i)", "w\(i)")
            kt.set("k\(i * 13 % main)", "rewritten\(i)")
            kt.remove("k\(i * 7 % main + 1)")
            if i % 10 == 0 { kt.set("brief\(i)", "gone soon", xt: 1) }
            if i % 25 == 0 { kt.remove("k\(i % aux)", db: 1) }
        }
        defer { _ = workload.stop() }

        // Killed twice during the copy: each restart resumes after the last key copied.
        let rate = ["--copy-rate", "4000/s,4MiB/s"]
        // Each run copies about a tenth of the records (batches of 500) before it is killed.
        let step = UInt64(max(Self.records / 5000, 2))
        var copied: UInt64 = 0
        for round in 0..<2 {
            let b = try bridge(kt, root, rate)
            let admin = try b.port("admin")
            let target = copied + step
            let moved = await Harness.eventually(timeout: .seconds(60)) {
                copied = (try? await client.checkpoint(sourceID: "kt")) ?? 0
                return copied >= target
            }
            XCTAssertTrue(moved, b.log)
            XCTAssertLessThan(copied, Self.floor, "still copying: the checkpoint counts the copy's batches")
            XCTAssertEqual(metricValue(port: admin, "qs_bridge_copy_active"), 1)
            XCTAssertGreaterThanOrEqual(metricValue(port: admin, "qs_bridge_copy_records_expected") ?? 0, Double(Self.records) * 0.95)
            XCTAssertEqual(httpGet(port: admin, path: "/readyz")?.status, 503)
            try b.stop(signal: SIGKILL)
            if round == 0 {
                XCTAssertTrue(b.log.contains("initial copy starting"), b.log)
            } else {
                XCTAssertTrue(b.log.contains("initial copy resuming"), b.log)
                XCTAssertFalse(b.log.contains("initial copy starting"), "a restarted copy resumes, it does not start again:\n\(b.log)")
            }
        }
        // `--initial-copy never` over the unfinished copy is refused (it replayed the log from
        // the copy's batch count, the records not yet copied lost).
        let before = (try? await client.checkpoint(sourceID: "kt")) ?? 0
        let never = try Harness.run("qsktbridge", ["--root", root.address, "--source", "kt://\(kt.address)", "--db-map", "0=,1=aux/",
                                                   "--source-id", "kt", "--sid", "99", "--initial-copy", "never"])
        let refusal = String(decoding: never.stderr, as: UTF8.self)
        XCTAssertNotEqual(never.status, 0, refusal)
        XCTAssertTrue(refusal.contains("unfinished initial copy") && refusal.contains("--initial-copy auto"), refusal)
        let after = (try? await client.checkpoint(sourceID: "kt")) ?? 0
        XCTAssertEqual(after, before, "the refused bridge wrote nothing")
        // A duplicate bridge joins the third run; then the copy finishes and the feed follows.
        let third = try bridge(kt, root)
        let duplicate = try bridge(kt, root)
        let switched = await Harness.eventually(timeout: .seconds(Double(Self.records) / 50)) {
            ((try? await client.checkpoint(sourceID: "kt")) ?? 0) >= Self.floor
        }
        XCTAssertTrue(switched, third.log)
        XCTAssertTrue(third.log.contains("initial copy resuming"), third.log)
        // Killed once after the copy: the restart follows the feed, it copies nothing.
        try third.stop(signal: SIGKILL)
        try duplicate.stop(signal: SIGKILL)
        let last = try bridge(kt, root)
        XCTAssertTrue(workload.stop())
        kt.set("marker", "end")
        let caughtUp = await Harness.eventually(timeout: .seconds(60)) {
            (try? await client.get(Array("marker".utf8)))?.value == Array("end".utf8)
        }
        XCTAssertTrue(caughtUp, last.log)
        XCTAssertFalse(last.log.contains("initial copy"), "after the copy the bridge follows the feed:\n\(last.log)")

        let verify = try Harness.run("qsctl", ["--node", root.address, "verify", "--kt", kt.address, "--db-map", "0=,1=aux/"])
        XCTAssertEqual(verify.status, 0, String(decoding: verify.stdout + verify.stderr, as: UTF8.self))
        XCTAssertEqual(try last.stop(), 0)
        await client.close()
        // A new connection: the first sat idle through the verify, past the root's --idle-timeout.
        let fresh = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        _ = try await verifyLog(fresh, sourceID: "kt")
        await fresh.close()
    }

    /// The copy cursor travels with the copy's log entries: a bridge moved to a compatible
    /// mirror of its root (a cut-over in the middle of a copy) resumes the copy there.
    /// A KT already migrated, started again under another source id (a typo, another
    /// spelling of its address) after its producers moved to qsrest: its initial copy would
    /// put KT's older values back over qsrest's newer ones. It stops before writing anything,
    /// naming the ids the root holds; `--allow-new-source-id` (another KT for this root) lets
    /// it start.
    func testABridgeUnderANewSourceIdStopsBeforeCopyingOverNewerWrites() async throws {
        let kt = try FakeKTProcess(logDir: tmp)
        kt.set("dns/x", "old-from-kt")
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let c = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        let first = try bridge(kt, root)
        let copied = await Harness.eventually(timeout: .seconds(30)) {
            let cp = (try? await c.checkpoint(sourceID: "kt")) ?? 0
            let value = (try? await c.get(Array("dns/x".utf8)))?.value
            return cp >= Self.floor && value == Array("old-from-kt".utf8)
        }
        XCTAssertTrue(copied, first.log)
        try first.stop()
        // qsrest's write (its position a wall time, as qsrest's are).
        let r = try await c.batch(sourceID: "qsrest-1", expected: 0, new: wallClockNanoseconds(),
                                  operations: [.set(key: Array("dns/x".utf8), value: Array("new-from-qsrest".utf8), expiry: nil)])
        guard case .applied = r else { return XCTFail("qsrest's write: \(r)") }
        let args = ["--root", root.address, "--source", "kt://\(kt.address)", "--db-map", "0=,1=aux/", "--source-id", "kt:kt-master:1978",
                    "--sid", "99", "--batch-interval", "100ms", "--log-format", "text"]
        let stopped = try Harness.run("qsktbridge", args, killAfter: .seconds(30))
        let err = String(decoding: stopped.stderr, as: UTF8.self)
        XCTAssertEqual(stopped.status, 1, err)
        XCTAssertTrue(err.contains("has no checkpoint for source id kt:kt-master:1978 but holds other KT or qsrest sources' checkpoints (kt, qsrest-1)")
                      && err.contains("--allow-new-source-id"), err)
        let after = try await c.get(Array("dns/x".utf8))
        XCTAssertEqual(after?.value, Array("new-from-qsrest".utf8), "the stopped bridge wrote KT's older value")
        let none = try await c.checkpoint(sourceID: "kt:kt-master:1978")
        XCTAssertNil(none, "nothing written under the new id")
        // Allowed: it starts (and logs the other ids).
        let allowed = try DaemonProcess("qsktbridge", args + ["--allow-new-source-id", "--admin", "127.0.0.1:0"], logDir: tmp, ready: true)
        let started = await Harness.eventually(timeout: .seconds(30)) { ((try? await c.checkpoint(sourceID: "kt:kt-master:1978")) ?? 0) >= Self.floor }
        XCTAssertTrue(started, allowed.log)
        XCTAssertTrue(allowed.log.contains("other-source-ids=kt,qsrest-1"), allowed.log)
        try allowed.stop()
        await c.close()
    }

    /// The source descriptors the node at `c` lists in its status.
    func descriptors(_ c: QSClient) async throws -> [String: String] {
        let json = try await c.status()
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        return try XCTUnwrap(object["source_descriptors"] as? [String: String], json)
    }

    func testABridgeRestartedWithAnotherDBMapStopsBeforeWritingUnlessTheChangeIsMeant() async throws {
        let kt = try FakeKTProcess(logDir: tmp)
        kt.set("k", "v1", db: 1)
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let replica = try ReplicaNode(data: tmp.appendingPathComponent("replica"), upstreams: [root.address], logDir: tmp)
        let c = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        let rc = try await QSClient.connect(host: "127.0.0.1", port: replica.port)
        let first = try bridge(kt, root)
        let copied = await Harness.eventually(timeout: .seconds(30)) {
            let cp = (try? await c.checkpoint(sourceID: "kt")) ?? 0
            let value = try? await c.get(Array("aux/k".utf8))
            return cp >= Self.floor && value != nil
        }
        XCTAssertTrue(copied, first.log)
        try first.stop()
        let recorded = try await descriptors(c)
        XCTAssertEqual(recorded, ["kt": "db-map 0=,1=aux/"])
        // Replicas hold it too (it travels in the log).
        let replicated = await Harness.eventually(timeout: .seconds(30)) { (try? await self.descriptors(rc)) == recorded }
        XCTAssertTrue(replicated, replica.daemon.log)

        // The same map in another order is the same map.
        let reordered = try bridge(kt, root, ["--db-map", "1=aux/,0="])
        kt.set("k", "v2", db: 1)
        let followed = await Harness.eventually(timeout: .seconds(30)) { (try? await c.get(Array("aux/k".utf8)))?.value == Array("v2".utf8) }
        XCTAssertTrue(followed, reordered.log)
        try reordered.stop()

        // A typo (no trailing slash): stopped before writing anything.
        let head = try await c.head()
        kt.set("k", "v3", db: 1)
        let typo = ["--root", root.address, "--source", "kt://\(kt.address)", "--db-map", "0=,1=aux", "--source-id", "kt", "--sid", "99",
                    "--batch-interval", "100ms", "--log-format", "text"]
        let stopped = try Harness.run("qsktbridge", typo, killAfter: .seconds(30))
        let err = String(decoding: stopped.stderr, as: UTF8.self)
        XCTAssertEqual(stopped.status, 1, err)
        XCTAssertTrue(err.contains("recorded source id kt as 'db-map 0=,1=aux/', and this writer's is 'db-map 0=,1=aux'")
                      && err.contains("--db-map '0=,1=aux/'") && err.contains("--db-map-changed") && err.contains("bridge stopped"), err)
        let after = try await c.head()
        XCTAssertEqual(after, head, "the stopped bridge wrote")
        let unprefixed = try await c.get(Array("auxk".utf8))
        XCTAssertNil(unprefixed)

        // Meant: recorded, and the bridge writes under the new map.
        let changed = try DaemonProcess("qsktbridge", typo + ["--db-map-changed", "--admin", "127.0.0.1:0"], logDir: tmp, ready: true)
        kt.set("k", "v4", db: 1)
        let moved = await Harness.eventually(timeout: .seconds(30)) { (try? await c.get(Array("auxk".utf8)))?.value == Array("v4".utf8) }
        XCTAssertTrue(moved, changed.log)
        XCTAssertTrue(changed.log.contains("source descriptor replaced at the root"), changed.log)
        try changed.stop()
        let now = try await descriptors(c)
        XCTAssertEqual(now, ["kt": "db-map 0=,1=aux"])
        let follows = await Harness.eventually(timeout: .seconds(30)) { (try? await self.descriptors(rc)) == now }
        XCTAssertTrue(follows, replica.daemon.log)
        // The replica's log and checkpoints are its root's: nothing applied twice.
        _ = try await verifyLog(rc, sourceID: "kt")
        let rootCheckpoint = try await c.checkpoint(sourceID: "kt")
        let sameCheckpoint = await Harness.eventually(timeout: .seconds(30)) { (try? await rc.checkpoint(sourceID: "kt")) == rootCheckpoint }
        XCTAssertTrue(sameCheckpoint, replica.daemon.log)
        await c.close()
        await rc.close()
    }

    /// A map that only adds databases (each mapped one keeps its prefix) moves no key
    /// already written: recorded without the flag; one that drops or moves one stops.
    func testADBMapThatOnlyAddsDatabasesIsRecordedWithoutTheFlag() async throws {
        let kt = try FakeKTProcess(logDir: tmp)
        kt.set("k", "v1")
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let c = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        let first = try bridge(kt, root, ["--db-map", "0="])
        let copied = await Harness.eventually(timeout: .seconds(30)) { ((try? await c.checkpoint(sourceID: "kt")) ?? 0) >= Self.floor }
        XCTAssertTrue(copied, first.log)
        try first.stop()
        kt.set("k", "v2", db: 1)
        let added = try bridge(kt, root, ["--db-map", "0=,1=aux/"])
        let followed = await Harness.eventually(timeout: .seconds(30)) { (try? await c.get(Array("aux/k".utf8)))?.value == Array("v2".utf8) }
        XCTAssertTrue(followed, added.log)
        XCTAssertTrue(added.log.contains("source descriptor extended at the root"), added.log)
        try added.stop()
        let recorded = try await descriptors(c)
        XCTAssertEqual(recorded, ["kt": "db-map 0=,1=aux/"])
        // Dropping database 1 again is no extension: stopped.
        let dropped = try Harness.run("qsktbridge", ["--root", root.address, "--source", "kt://\(kt.address)", "--db-map", "0=", "--source-id", "kt",
                                                     "--sid", "99", "--log-format", "text"], killAfter: .seconds(30))
        let err = String(decoding: dropped.stderr, as: UTF8.self)
        XCTAssertEqual(dropped.status, 1, err)
        XCTAssertTrue(err.contains("recorded source id kt as 'db-map 0=,1=aux/'"), err)
        await c.close()
    }

    func testACopyMovedToACompatibleMirrorResumesThere() async throws {
        let kt = try FakeKTProcess(logDir: tmp)
        load(kt, db: 0, count: 4000)
        load(kt, db: 1, count: 10)
        let legacy = try RootNode(data: tmp.appendingPathComponent("L"), logDir: tmp)
        let new = try RootNode(data: tmp.appendingPathComponent("N"), logDir: tmp)
        let lc = try await QSClient.connect(host: "127.0.0.1", port: legacy.port)
        let nc = try await QSClient.connect(host: "127.0.0.1", port: new.port)
        // Paced to take some four seconds; killed after its second batch of records.
        let first = try bridge(kt, legacy, ["--copy-rate", "1000/s"])
        let started = await Harness.eventually(timeout: .seconds(60)) { ((try? await lc.checkpoint(sourceID: "kt")) ?? 0) >= 3 }
        XCTAssertTrue(started, first.log)
        try first.stop(signal: SIGKILL)
        let stopped = try await lc.checkpoint(sourceID: "kt") ?? 0
        XCTAssertLessThan(stopped, Self.floor, "killed during the copy")
        let mirror = try DaemonProcess("qsqsbridge", ["--source", "qs://\(legacy.address)", "--root", new.address, "--mode", "compatible",
                                                      "--batch-interval", "100ms", "--log-format", "text"], logDir: tmp)
        let legacyHead = try await lc.head()
        let mirrored = await Harness.eventually(timeout: .seconds(30)) { (try? await nc.head()) == legacyHead }
        XCTAssertTrue(mirrored, mirror.log)
        let mirroredCheckpoint = try await nc.checkpoint(sourceID: "kt")
        XCTAssertEqual(mirroredCheckpoint, stopped, "the checkpoint travelled")
        let copying = await initialCopy(nc)
        XCTAssertTrue(copying, "the copy cursor travelled: N says a copy is in progress")
        let table = try Harness.run("qsctl", ["--node", new.address, "status"])
        XCTAssertTrue(String(decoding: table.stdout, as: UTF8.self).contains("(initial copy in progress)"),
                      "the table says so too:\n" + String(decoding: table.stdout, as: UTF8.self))
        try mirror.stop()
        // The mirror's bridge is stopped and L still answers as a writable root: no promote,
        // not even forced (two roots); once L is demoted (it took no writes meanwhile), N
        // holds its head and is promoted (still only forced: nothing feeds N, so where L's
        // writes went is not known to qsctl).
        let twoRoots = try Harness.run("qsctl", ["--node", new.address, "promote", "--force"])
        XCTAssertEqual(twoRoots.status, 2, String(decoding: twoRoots.stdout + twoRoots.stderr, as: UTF8.self))
        XCTAssertTrue(String(decoding: twoRoots.stderr, as: UTF8.self).contains("still takes writes"),
                      String(decoding: twoRoots.stderr, as: UTF8.self))
        let demote = try Harness.run("qsctl", ["--node", legacy.address, "demote"])
        XCTAssertEqual(demote.status, 0, String(decoding: demote.stderr, as: UTF8.self))
        let promote = try Harness.run("qsctl", ["--node", new.address, "promote", "--force"])
        XCTAssertEqual(promote.status, 0, String(decoding: promote.stdout + promote.stderr, as: UTF8.self))

        let moved = try bridge(kt, new)
        let finished = await Harness.eventually(timeout: .seconds(60)) { ((try? await nc.checkpoint(sourceID: "kt")) ?? 0) >= Self.floor }
        XCTAssertTrue(finished, moved.log)
        XCTAssertTrue(moved.log.contains("initial copy resuming"), moved.log)
        XCTAssertFalse(moved.log.contains("copying again"), "the bridge resumed the copy, it did not start over:\n\(moved.log)")
        let done = await initialCopy(nc)
        XCTAssertFalse(done)
        let verify = try Harness.run("qsctl", ["--node", new.address, "verify", "--kt", kt.address, "--db-map", "0=,1=aux/"])
        XCTAssertEqual(verify.status, 0, String(decoding: verify.stdout + verify.stderr, as: UTF8.self))
        XCTAssertEqual(try moved.stop(), 0)
        await lc.close()
        await nc.close()
    }

    /// Whether the node's status shows an initial copy in progress for source id "kt".
    func initialCopy(_ c: QSClient) async -> Bool {
        guard let json = try? await c.status(),
              let s = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any],
              let sources = s["sources"] as? [[String: Any]] else { return false }
        return sources.contains { $0["source_id"] as? String == "kt" && $0["initial_copy"] as? Bool == true }
    }

    func testWhatCannotBeCopiedIsRefusedBeforeAnythingIsWritten() async throws {
        let kt = try FakeKTProcess(logDir: tmp)
        load(kt, db: 0, count: 10)
        load(kt, db: 1, count: 10)
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let client = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        // Database 1 holds records but is not mapped.
        let unmapped = try Harness.run("qsktbridge", ["--root", root.address, "--source", "kt://\(kt.address)", "--db-map", "0=",
                                                      "--source-id", "kt", "--sid", "99", "--log-format", "text"])
        XCTAssertNotEqual(unmapped.status, 0)
        XCTAssertTrue(String(decoding: unmapped.stderr, as: UTF8.self).contains("KT database 1 (aux.kct, 10 records) is not mapped by --db-map"),
                      String(decoding: unmapped.stderr, as: UTF8.self))
        let none = try await client.checkpoint(sourceID: "kt")
        XCTAssertNil(none, "nothing was written")
        // A mapped database KT does not have.
        let missing = try Harness.run("qsktbridge", ["--root", root.address, "--source", "kt://\(kt.address)", "--db-map", "0=,1=aux/,2=x/",
                                                     "--source-id", "kt", "--sid", "99", "--log-format", "text"])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(String(decoding: missing.stderr, as: UTF8.self).contains("maps KT database 2, which"), String(decoding: missing.stderr, as: UTF8.self))
        // A record larger than a batch may carry: named, and its batch never written.
        kt.set("big", String(repeating: "b", count: 4096))
        let big = try Harness.run("qsktbridge", ["--root", root.address, "--source", "kt://\(kt.address)", "--db-map", "0=,1=aux/",
                                                 "--source-id", "kt", "--sid", "99", "--batch-max-bytes", "1KiB", "--log-format", "text"])
        XCTAssertNotEqual(big.status, 0)
        XCTAssertTrue(String(decoding: big.stderr, as: UTF8.self).contains("key 'big' with 4099 bytes"), String(decoding: big.stderr, as: UTF8.self))
        let bigRecord = try await client.get(Array("big".utf8))
        XCTAssertNil(bigRecord)
        await client.close()
    }
}
