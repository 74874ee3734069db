import Foundation
import QSClient
import QSTesting
import XCTest

/// A bridge's signals tell the truth: a dead root is noticed while the source is idle, a
/// wrong token stops it at start-up, and its lag grows while its source is gone.
final class BridgeHealthTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("bridge-health")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    func testADeadRootIsNoticedWithinFiveSecondsWhileTheSourceIsIdle() async throws {
        let kt = try FakeKTProcess(logDir: tmp)
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let bridge = try DaemonProcess("qsktbridge", ["--root", root.address, "--source", "kt://\(kt.address)", "--sid", "99",
                                                      "--admin", "127.0.0.1:0", "--log-format", "text"], logDir: tmp, ready: true)
        let admin = try bridge.port("admin")
        try await waitFor("the bridge ready and connected", timeout: .seconds(20)) {
            httpGet(port: admin, path: "/readyz")?.status == 200 && metricValue(port: admin, "qs_bridge_root_connected") == 1
        }
        // Nothing is written to KT from here on: the bridge has nothing to send.
        XCTAssertEqual(try root.daemon.stop(signal: SIGKILL), SIGKILL)
        let killed = ContinuousClock.now
        try await waitFor("/readyz 503 naming the root and qs_bridge_root_connected 0", timeout: .seconds(5)) {
            guard let r = httpGet(port: admin, path: "/readyz"), r.status == 503 else { return false }
            return r.body.contains("not connected to the root \(root.address)") && metricValue(port: admin, "qs_bridge_root_connected") == 0
        }
        print("dead root noticed after \(ContinuousClock.now - killed)")
        XCTAssertTrue(bridge.isRunning, "the bridge keeps retrying the root")
    }

    /// qs_bridge_pending_changes counts every change read and not yet applied while a long
    /// batch interval gathers them (it read 1 with 3,000 pending: told only when the count
    /// left 0 and at each batch).
    func testPendingChangesCountsWhatALongBatchIntervalGathers() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let dir = tmp.appendingPathComponent("ulog")
        try FileManager.default.copyItem(at: try KTFixture("basic").ulog, to: dir)
        let bridge = try DaemonProcess("qsktbridge", ["--root", root.address, "--source", "ulog:\(dir.path)", "--db-map", "0=main/,1=aux/",
                                                      "--allow-clear", "--source-id", "p", "--batch-interval", "60s", "--admin", "127.0.0.1:0", "--log-format", "text"],
                                       logDir: tmp, ready: true)
        let admin = try bridge.port("admin")
        // The basic fixture's update log holds 903 records, one change each.
        try await waitFor("903 changes pending", timeout: .seconds(20)) {
            metricValue(port: admin, "qs_bridge_pending_changes") == 903
        }
        let c = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        let applied = try await c.checkpoint(sourceID: "p")
        XCTAssertNil(applied, "nothing applied before the batch interval")
        await c.close()
        _ = try bridge.stop()
    }

    /// A root that keeps its connections but stops answering (here: SIGSTOP, as a hung
    /// process or a stalled disk would) is noticed while a batch waits for it, long before
    /// the batch's own timeout; once it answers again the bridge is ready again.
    /// A root out of room answers the bridge's keepalives and refuses every batch: /readyz
    /// names the refusal (it said "catching up", or the copy's progress, frozen) while the
    /// bridge keeps retrying.
    func testARootRefusingEveryBatchIsNamedByReadyz() async throws {
        try XCTSkipIf(ProcessInfo.processInfo.environment["QS_STORE_ENGINE"] == "rocksdb", "LMDB only: --map-size bounds an LMDB store")
        let kt = try FakeKTProcess(logDir: tmp)
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp, extraArgs: ["--map-size", "2MiB"])
        let bridge = try DaemonProcess("qsktbridge", ["--root", root.address, "--source", "kt://\(kt.address)", "--sid", "99",
                                                      "--batch-interval", "50ms", "--admin", "127.0.0.1:0", "--log-format", "text"],
                                       logDir: tmp, ready: true)
        let admin = try bridge.port("admin")
        try await waitFor("the bridge ready", timeout: .seconds(20)) { httpGet(port: admin, path: "/readyz")?.status == 200 }
        let value = String(repeating: "v", count: 60_000)
        for i in 0..<60 { kt.set("big/\(i)", value) }
        try await waitFor("/readyz 503 naming the root's refusal", timeout: .seconds(30)) {
            guard let r = httpGet(port: admin, path: "/readyz"), r.status == 503 else { return false }
            return r.body.contains("refuses the bridge's writes") && r.body.contains("storage-full")
        }
        XCTAssertTrue(bridge.isRunning, "the bridge keeps retrying: nothing is lost, KT keeps the changes")
    }

    /// KT, a root and a bridge (batches every 100 ms) with one write applied: the start of
    /// the hung-root tests.
    func startWithOneWriteApplied(_ extra: [String] = []) async throws -> (FakeKTProcess, RootNode, DaemonProcess, Int) {
        let kt = try FakeKTProcess(logDir: tmp)
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let bridge = try DaemonProcess("qsktbridge", ["--root", root.address, "--source", "kt://\(kt.address)", "--sid", "99",
                                                      "--batch-interval", "100ms", "--admin", "127.0.0.1:0", "--log-format", "text"] + extra,
                                       logDir: tmp, ready: true)
        let admin = try bridge.port("admin")
        kt.set("before", "1")
        try await waitFor("the bridge ready with the first write applied", timeout: .seconds(20)) {
            httpGet(port: admin, path: "/readyz")?.status == 200 && root.metric("qs_ops_applied_total") == 1
        }
        return (kt, root, bridge, admin)
    }

    func testAHungRootIsNoticedWhileABatchWaits() async throws {
        let (kt, root, bridge, admin) = try await startWithOneWriteApplied()
        kill(root.daemon.pid, SIGSTOP)
        defer { kill(root.daemon.pid, SIGCONT) }
        kt.set("during", "2")
        let stopped = ContinuousClock.now
        try await waitFor("/readyz 503: connected but not answering, qs_bridge_root_connected 0", timeout: .seconds(8)) {
            guard let r = httpGet(port: admin, path: "/readyz"), r.status == 503 else { return false }
            return r.body.contains("connected but not answering") && metricValue(port: admin, "qs_bridge_root_connected") == 0
        }
        print("hung root noticed after \(ContinuousClock.now - stopped)")
        kill(root.daemon.pid, SIGCONT)
        try await waitFor("the waiting batch applied and the bridge ready again", timeout: .seconds(20)) {
            httpGet(port: admin, path: "/readyz")?.status == 200 && root.metric("qs_ops_applied_total") == 2
                && metricValue(port: admin, "qs_bridge_root_connected") == 1
        }
        XCTAssertEqual(try bridge.stop(), 0, bridge.log)
    }

    /// SIGTERM while a batch waits for a hung root: the bridge exits 75 once
    /// --shutdown-timeout has passed (the wait for the answer did not heed the cancellation
    /// and held it for the whole 15 s call timeout).
    func testShutdownTimeoutIsHeldToWhileABatchWaitsForAHungRoot() async throws {
        let (kt, root, bridge, admin) = try await startWithOneWriteApplied(["--shutdown-timeout", "1s"])
        kill(root.daemon.pid, SIGSTOP)
        defer { kill(root.daemon.pid, SIGCONT) }
        kt.set("during", "2")
        try await waitFor("the batch waiting for the hung root", timeout: .seconds(8)) {
            httpGet(port: admin, path: "/readyz")?.body.contains("connected but not answering") ?? false
        }
        let term = ContinuousClock.now
        XCTAssertEqual(try bridge.stop(), 75, bridge.log)
        XCTAssertLessThan(ContinuousClock.now - term, .seconds(10), "within --shutdown-timeout, not the call timeout (15 s)")
        XCTAssertTrue(bridge.log.contains("shutdown timeout passed before the pending batch reached the root"), bridge.log)
    }

    /// A root hung for longer than the source timeout does not cost the KT connection:
    /// heartbeats are answered as they are read and the silence timeout counts only while
    /// the bridge wants to read (it ended a healthy connection while the bridge waited on the
    /// root, and the bridge met "I/O on closed channel" once the root came back). The batch
    /// sent again after the hang found committed is not blamed on another writer.
    func testARootHungLongerThanTheSourceTimeoutKeepsTheKTConnection() async throws {
        let (kt, root, bridge, admin) = try await startWithOneWriteApplied(["--batches-in-flight", "1", "--source-timeout", "1s"])
        kill(root.daemon.pid, SIGSTOP)
        defer { kill(root.daemon.pid, SIGCONT) }
        // KT keeps taking writes: with one batch in flight the bridge stops reading KT
        // (the next batch waits for the hung one's answer). Noticed after 4 s of waiting,
        // four times the source timeout; then held as long again.
        var during = 0
        try await waitFor("/readyz 503: the root connected but not answering", timeout: .seconds(10), pollEvery: .milliseconds(200)) {
            kt.set("during-\(during)", "2")
            during += 1
            guard let r = httpGet(port: admin, path: "/readyz"), r.status == 503 else { return false }
            return r.body.contains("connected but not answering")
        }
        let noticed = ContinuousClock.now
        try await waitFor("four more seconds of the hang", timeout: .seconds(10), pollEvery: .milliseconds(200)) {
            kt.set("during-\(during)", "2")
            during += 1
            return ContinuousClock.now - noticed >= .seconds(4)
        }
        kill(root.daemon.pid, SIGCONT)
        let written = during
        try await waitFor("the waiting changes applied and the bridge ready again", timeout: .seconds(20)) {
            httpGet(port: admin, path: "/readyz")?.status == 200 && root.metric("qs_ops_applied_total") == Double(1 + written)
        }
        XCTAssertEqual(metricValue(port: admin, "qs_bridge_reconnects_total"), 0, bridge.log)
        XCTAssertFalse(bridge.log.contains("source failed"), bridge.log)
        XCTAssertFalse(bridge.log.contains("another writer"), bridge.log)
        XCTAssertEqual(try bridge.stop(), 0, bridge.log)
    }

    func testAWrongWriteTokenStopsTheBridgeAtStartUpNamingTheTokenFile() async throws {
        let rootToken = tmp.appendingPathComponent("root.token"), bridgeToken = tmp.appendingPathComponent("bridge.token")
        try "0123456789abcdef0123456789abcdef\n".write(to: rootToken, atomically: true, encoding: .utf8)
        try "not-the-root-token-at-all-000000\n".write(to: bridgeToken, atomically: true, encoding: .utf8)
        let kt = try FakeKTProcess(logDir: tmp)
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp, extraArgs: ["--write-token-file", rootToken.path])
        let bridge = try DaemonProcess("qsktbridge", ["--root", root.address, "--source", "kt://\(kt.address)", "--sid", "99",
                                                      "--write-token-file", bridgeToken.path, "--log-format", "text"], logDir: tmp)
        // KT holds nothing and nobody writes to it: only the start-up check can stop the bridge.
        try await waitFor("the bridge to exit", timeout: .seconds(10)) { !bridge.isRunning }
        bridge.process.waitUntilExit()
        XCTAssertNotEqual(bridge.process.terminationStatus, 0)
        XCTAssertTrue(bridge.log.contains("--write-token-file \(bridgeToken.path)"), bridge.log)
        XCTAssertEqual(root.metric("qs_auth_failures_total{interface=\"write\"}"), 1)
    }

    /// A fakekt, a root and a KT bridge between them, ready; the bridge's admin port.
    func readyKTBridge() async throws -> (FakeKTProcess, RootNode, DaemonProcess, Int) {
        let kt = try FakeKTProcess(logDir: tmp)
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let bridge = try DaemonProcess("qsktbridge", ["--root", root.address, "--source", "kt://\(kt.address)", "--sid", "99",
                                                      "--admin", "127.0.0.1:0", "--log-format", "text"],
                                       logDir: tmp, ready: true)
        let admin = try bridge.port("admin")
        try await waitFor("the bridge ready", timeout: .seconds(20)) { httpGet(port: admin, path: "/readyz")?.status == 200 }
        return (kt, root, bridge, admin)
    }

    /// A KT that hangs (SIGSTOP: it keeps its connections and accepts new ones) is named as
    /// silent, not as "catching up": it heartbeats every second when idle, and the bridge
    /// counts the silence across its reconnections; once KT speaks again the bridge is ready.
    func testAHungKTIsNamedSilentNotCatchingUp() async throws {
        let (kt, root, bridge, admin) = try await readyKTBridge()
        defer { withExtendedLifetime((root, bridge)) {} }
        // The lag (--ready-lag, 5 s) passes when KT has been silent for 4 s or more, past
        // the two heartbeats that make a source silent.
        XCTAssertLessThan(try XCTUnwrap(metricValue(port: admin, "qs_bridge_source_silent_seconds")), 2.5, "KT heartbeats every second")
        kill(kt.daemon.pid, SIGSTOP)
        var resumed = false
        defer { if !resumed { kill(kt.daemon.pid, SIGCONT) } }
        try await waitFor("/readyz 503 naming the source's silence", timeout: .seconds(20), pollEvery: .milliseconds(100)) {
            guard let r = httpGet(port: admin, path: "/readyz"), r.status == 503 else { return false }
            XCTAssertFalse(r.body.contains("catching up"), r.body)
            return r.body.contains("has sent nothing, not even a heartbeat")
        }
        // Past KT's silence timeout (10 s) the bridge connects again: the silence still counts.
        try await waitFor("the silence counted past a reconnection", timeout: .seconds(30), pollEvery: .milliseconds(200)) {
            (metricValue(port: admin, "qs_bridge_source_silent_seconds") ?? 0) > 11
        }
        try await waitFor("/readyz saying the reconnection has not helped", timeout: .seconds(10), pollEvery: .milliseconds(100)) {
            httpGet(port: admin, path: "/readyz")?.body.contains("connecting again after each 10 s of silence has not helped") == true
        }
        kill(kt.daemon.pid, SIGCONT)
        resumed = true
        try await waitFor("the bridge ready again", timeout: .seconds(30)) { httpGet(port: admin, path: "/readyz")?.status == 200 }
        XCTAssertLessThan(try XCTUnwrap(metricValue(port: admin, "qs_bridge_source_silent_seconds")), 2.5)
    }

    /// A KT that is gone (its port refuses connections) is named by the failure, not as a
    /// source that hangs or a network that drops its traffic ("has sent nothing, not even a
    /// heartbeat" sent the operator to look for a hung process).
    func testADeadKTIsNamedByItsConnectionFailure() async throws {
        let (kt, root, bridge, admin) = try await readyKTBridge()
        defer { withExtendedLifetime((root, bridge)) {} }
        try kt.daemon.stop(signal: SIGKILL)
        try await waitFor("/readyz 503 naming the refused connection", timeout: .seconds(20), pollEvery: .milliseconds(100)) {
            guard let r = httpGet(port: admin, path: "/readyz"), r.status == 503 else { return false }
            XCTAssertFalse(r.body.contains("not even a heartbeat"), r.body)
            return r.body.hasPrefix("not connected to the source: ") && r.body.contains("Connection refused")
        }
    }

    /// A KT source whose bridge has gone (stopped, or the source retired after its producers
    /// moved) shows a lag that grows for ever in `qsctl status`: the root says whether a
    /// writer of that source id is connected, and the table says what no writer means.
    func testStatusSaysWhetherAKTSourceHasAWriter() async throws {
        let (_, root, bridge, _) = try await readyKTBridge()
        func source() throws -> [String: Any]? {
            let r = try Harness.run("qsctl", ["--node", root.address, "status", "--output", "json"])
            let s = try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any]
            return (s?["sources"] as? [[String: Any]])?.first { ($0["source_id"] as? String)?.hasPrefix("kt:") == true }
        }
        XCTAssertEqual(try source()?["writer_connected"] as? Bool, true)
        XCTAssertEqual(try bridge.stop(), 0)
        try await waitFor("the root to see the bridge gone", timeout: .seconds(10), pollEvery: .milliseconds(100)) {
            try source()?["writer_connected"] as? Bool == false
        }
        let table = String(decoding: try Harness.run("qsctl", ["--node", root.address, "status"]).stdout, as: UTF8.self)
        XCTAssertTrue(table.contains("(no writer connected: its bridge is down, or the source is retired)"), table)
    }

    /// A mirror bridge's lag is computed when scraped: it grows while its source root is dead,
    /// and so does the root age of the mirror's replicas (the mirror passes on its source
    /// root's time; its own clock would tell them all is well).
    func testTheLagGrowsWhileTheSourceIsDead() async throws {
        let legacy = try RootNode(data: tmp.appendingPathComponent("L"), logDir: tmp)
        let new = try RootNode(data: tmp.appendingPathComponent("N"), logDir: tmp)
        let writer = try await QSClient.connect(host: "127.0.0.1", port: legacy.port)
        _ = try await writer.write([.set(key: Array("k".utf8), value: Array("v".utf8), expiry: nil)])
        await writer.close()
        let mirror = try DaemonProcess("qsqsbridge", ["--source", "qs://\(legacy.address)", "--root", new.address, "--mode", "compatible",
                                                      "--batch-interval", "100ms", "--admin", "127.0.0.1:0", "--log-format", "text"],
                                       logDir: tmp, ready: true)
        let admin = try mirror.port("admin")
        try await waitFor("the mirror ready", timeout: .seconds(20)) { httpGet(port: admin, path: "/readyz")?.status == 200 }
        // The mirror holds L's entry before L dies (ready alone says only that it reads L).
        let probe = try await QSClient.connect(host: "127.0.0.1", port: new.port)
        try await waitFor("N to hold L's entry", timeout: .seconds(20)) { (try? await probe.head().index) == 1 }
        await probe.close()
        let replica = try ReplicaNode(data: tmp.appendingPathComponent("R"), upstreams: [new.address], logDir: tmp)
        try await waitFor("N's replica fresh", timeout: .seconds(20)) { (replica.metric("qs_replica_root_age_seconds") ?? 99) < 2 }
        try legacy.daemon.stop(signal: SIGKILL)
        let first = try XCTUnwrap(metricValue(port: admin, "qs_bridge_lag_seconds"))
        try await waitFor("the root age of N's replica to pass 3 s while L is dead", timeout: .seconds(10), pollEvery: .milliseconds(100)) {
            (replica.metric("qs_replica_root_age_seconds") ?? 0) > 3
        }
        try await waitFor("qs_bridge_lag_seconds to grow by 2 s past \(first)", timeout: .seconds(10), pollEvery: .milliseconds(100)) {
            (metricValue(port: admin, "qs_bridge_lag_seconds") ?? 0) >= first + 2
        }
        let ready = try XCTUnwrap(httpGet(port: admin, path: "/readyz"))
        XCTAssertEqual(ready.status, 503, ready.body)
        XCTAssertTrue(ready.body.contains("source"), ready.body)
        // The mirror root knows which bridge follows it, and what it reads.
        let target = try await QSClient.connect(host: "127.0.0.1", port: new.port)
        let status = try JSONSerialization.jsonObject(with: Data(try await target.status().utf8)) as? [String: Any]
        await target.close()
        XCTAssertGreaterThan(status?["root_age_seconds"] as? Double ?? 0, 3, "N's own status ages with L")
        let mirrorStatus = try XCTUnwrap(status?["mirror"] as? [String: Any], "\(String(describing: status))")
        XCTAssertEqual(mirrorStatus["following"] as? Bool, true)
        let followers = try XCTUnwrap(mirrorStatus["followed_by"] as? [[String: Any]])
        XCTAssertEqual(followers.count, 1)
        XCTAssertTrue((followers.first?["client"] as? String ?? "").contains("source=qs://\(legacy.address)"), "\(followers)")
    }
}
