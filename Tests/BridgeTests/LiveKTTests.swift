import Foundation
import QSClient
import QSModel
import QSStore
import QSTesting
import XCTest

/// `qsktbridge` tailing a live (fake) KT over its replication protocol, with faults.
final class LiveKTTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("live")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    /// These tests are about the feed: no initial copy (InitialCopyTests covers it; during a
    /// copy, records appear in key order, not in KT's order).
    func bridge(_ kt: FakeKTProcess, _ root: RootNode, source: String? = nil, extra: [String] = []) throws -> (DaemonProcess, Int) {
        let d = try DaemonProcess("qsktbridge", ["--root", root.address, "--source", "kt://\(source ?? kt.address)", "--db-map", "0=,1=aux/", "--initial-copy", "never",
                                                 "--sid", "99", "--batch-interval", "100ms", "--admin", "127.0.0.1:0",
                                                 "--log-format", "text"] + extra, logDir: tmp, ready: true)
        return (d, try d.port("admin"))
    }

    /// Waits until the root holds `key` with `value` (nil: absent).
    func waitFor(_ c: QSClient, _ key: String, _ value: String?, timeout: Duration = .seconds(20)) async -> Bool {
        await Harness.eventually(timeout: timeout) {
            let r = try? await c.get(Array(key.utf8))
            return r?.value == value.map { Array($0.utf8) }
        }
    }

    func testFollowsLiveKTAnswersHeartbeatsAndCarriesExpiry() async throws {
        let kt = try FakeKTProcess(logDir: tmp)
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let (b, admin) = try bridge(kt, root)
        for i in 0..<50 { kt.set("k\(i)", "v\(i)") }
        kt.set("aux-key", "in-db-1", db: 1)
        kt.set("expiring", "soon", xt: -4_102_444_800)  // KT: a negative xt is an absolute time
        kt.remove("k3")
        kt.set("last", "written")
        let c = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        // The last write is applied, so is every one before it (updates apply in KT's order).
        let caughtUp = await waitFor(c, "last", "written")
        XCTAssertTrue(caughtUp, b.log)
        let k3 = try await c.get(Array("k3".utf8))
        XCTAssertNil(k3)
        let aux = try await c.get(Array("aux/aux-key".utf8))
        XCTAssertEqual(aux?.value, Array("in-db-1".utf8))
        let expiring = try await c.get(Array("expiring".utf8))
        XCTAssertEqual(expiring?.expiry, 4_102_444_800)
        // Idle: KT heartbeats, the bridge answers them and stays connected.
        XCTAssertTrue(Harness.waitUntil { (metricValue(port: admin, "qs_bridge_source_heartbeats_total") ?? 0) >= 10 })
        XCTAssertEqual(httpGet(port: admin, path: "/readyz")?.status, 200)
        XCTAssertLessThan(metricValue(port: admin, "qs_bridge_lag_seconds") ?? 99, 5)
        kt.set("after-idle", "yes")
        let after = await waitFor(c, "after-idle", "yes")
        XCTAssertTrue(after)
        XCTAssertFalse(b.log.contains("source failed"), "the connection never dropped:\n\(b.log)")
        // The lag picture: samples printed, an SVG line chart written.
        let svg = tmp.appendingPathComponent("lag.svg")
        let lag = try Harness.run("qsctl", ["lag", "--admin", "127.0.0.1:\(admin)", "--duration", "1s", "--interval", "200ms", "--plot", svg.path])
        XCTAssertEqual(lag.status, 0, String(decoding: lag.stderr, as: UTF8.self))
        XCTAssertGreaterThanOrEqual(String(decoding: lag.stdout, as: UTF8.self).split(separator: "\n").filter { $0.contains("qs_bridge_lag_seconds") }.count, 3)
        let chart = try String(contentsOf: svg, encoding: .utf8)
        XCTAssertTrue(chart.hasPrefix("<svg") && chart.contains("<polyline"), chart)
        XCTAssertEqual(try b.stop(), 0)
        let cp = try await c.checkpoint(sourceID: "kt:127.0.0.1:\(kt.port)")
        XCTAssertNotNil(cp)
        _ = try await verifyLog(c, sourceID: "kt:127.0.0.1:\(kt.port)")
        await c.close()
    }

    func testCorruptAndCutFramesAreNeverAppliedAndTheBridgeResumes() async throws {
        for fault in [["-fault-corrupt-frame", "7"], ["-fault-cut-frame", "5"], ["-fault-close-after", "9"]] {
            let kt = try FakeKTProcess(logDir: tmp, faults: fault)
            let root = try RootNode(data: tmp.appendingPathComponent("root-\(fault[0])"), logDir: tmp)
            for i in 0..<40 { kt.set("key\(i)", "value\(i)") }
            let (b, _) = try bridge(kt, root)
            let c = try await QSClient.connect(host: "127.0.0.1", port: root.port)
            let done = await waitFor(c, "key39", "value39", timeout: .seconds(60))
            XCTAssertTrue(done, "\(fault): \(b.log)")
            XCTAssertTrue(b.log.contains("source failed; resuming from the root's checkpoint"), "\(fault): \(b.log)")
            let state = try await dumpState(c)
            XCTAssertEqual(state.count, 40, "\(fault)")
            for i in 0..<40 { XCTAssertEqual(state[Array("key\(i)".utf8)]?.value, Array("value\(i)".utf8)) }
            _ = try await verifyLog(c, sourceID: "kt:127.0.0.1:\(kt.port)")
            await c.close()
            try b.stop()
        }
    }

    func testASidEqualToAWritersStopsTheBridgeWithAClearError() async throws {
        let kt = try FakeKTProcess(logDir: tmp, sid: 7)
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        for i in 0..<300 { kt.set("k\(i)", "v") }
        let r = try Harness.run("qsktbridge", ["--root", root.address, "--source", "kt://\(kt.address)", "--sid", "7", "--db-map", "0=,1=aux/", "--initial-copy", "never"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(String(decoding: r.stderr, as: UTF8.self).contains("--sid 7"), String(decoding: r.stderr, as: UTF8.self))
    }

    /// A --sid equal to the KT server's own, with a few writes (far fewer than the 256 in a
    /// row after which KT says so in an empty frame): KT withholds them, and its heartbeats
    /// tell. The bridge stops before its checkpoint passes them, so a bridge started with
    /// a right --sid brings them all (the checkpoint had moved past them for good).
    func testASidEqualToTheServersStopsTheBridgeBeforeAFewWithheldWritesAreLost() async throws {
        let kt = try FakeKTProcess(logDir: tmp, sid: 7)
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let wrong = try DaemonProcess("qsktbridge", ["--root", root.address, "--source", "kt://\(kt.address)", "--sid", "7", "--db-map", "0=,1=aux/",
                                                     "--initial-copy", "never", "--batch-interval", "100ms", "--log-format", "text"],
                                      logDir: tmp, ready: true)
        let c = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        let id = "kt:127.0.0.1:\(kt.port)"
        // Idle KT's heartbeats move the checkpoint first: a right bridge resumes from it, so
        // the writes arrive below only if the checkpoint never passed them.
        try await QSTesting.waitFor("the idle bridge's checkpoint moved by heartbeats", timeout: .seconds(20)) {
            ((try? await c.checkpoint(sourceID: id)) ?? nil ?? 0) > 0
        }
        // A few writes a heartbeat or two apart, each likely the first of its millisecond
        // (the case a stamp with a counter does not tell at once).
        for i in 0..<3 {
            kt.set("withheld-\(i)", "v\(i)")
            try await Task.sleep(for: .milliseconds(250))
        }
        try await QSTesting.waitFor("the bridge to stop", timeout: .seconds(20)) { !wrong.isRunning }
        wrong.process.waitUntilExit()
        XCTAssertNotEqual(wrong.process.terminationStatus, 0)
        XCTAssertTrue(wrong.log.contains("--sid 7"), wrong.log)
        let stoppedAt = try await c.checkpoint(sourceID: id) ?? 0
        XCTAssertGreaterThan(stoppedAt, 0)
        let (right, _) = try bridge(kt, root)
        for i in 0..<3 {
            let arrived = await waitFor(c, "withheld-\(i)", "v\(i)")
            XCTAssertTrue(arrived, right.log)
        }
        XCTAssertEqual(try right.stop(), 0)
        await c.close()
    }

    /// A bridge restarted with a --sid equal to the KT server's own catches up over a few
    /// writes made while it was down: KT's reader reaches them more than a second after they
    /// were written, so its heartbeats are stamped with its clock and tell nothing. KT's
    /// update log does (`ulog_list`): the checkpoint stays below them, the bridge stops
    /// naming --sid, and a bridge with a right --sid brings them.
    func testASidEqualToTheServersStopsABridgeCatchingUpOverOldWithheldWrites() async throws {
        let kt = try FakeKTProcess(logDir: tmp, sid: 7)
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let c = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        let id = "kt:127.0.0.1:\(kt.port)"
        let (first, admin) = try bridge(kt, root)
        try await QSTesting.waitFor("the idle bridge's checkpoint moved by heartbeats", timeout: .seconds(20)) {
            ((try? await c.checkpoint(sourceID: id)) ?? nil ?? 0) > 0
        }
        XCTAssertEqual(try first.stop(), 0, first.log)
        _ = admin
        let writtenAt = ContinuousClock.now
        for i in 0..<3 { kt.set("while-down-\(i)", "v\(i)") }
        // The fault's shape: the writes are more than a second old when the bridge comes back.
        try await Task.sleep(until: writtenAt + .milliseconds(1500))
        let wrong = try DaemonProcess("qsktbridge", ["--root", root.address, "--source", "kt://\(kt.address)", "--sid", "7", "--db-map", "0=,1=aux/",
                                                     "--initial-copy", "never", "--batch-interval", "100ms", "--log-format", "text",
                                                     "--admin", "127.0.0.1:0"],
                                      logDir: tmp, ready: true)
        try await assertStopsThenARightSidBrings(wrong, kt, root, c, keys: (0..<3).map { "while-down-\($0)" })
    }

    /// A running bridge with KT's own sid stalls (stopped here; a back-pressured reader is
    /// the same to KT, whose reader waits on a heartbeat's answer) while a few writes land:
    /// KT's reader reaches them late and stamps its heartbeats with the clock. KT's update
    /// log tells, and the bridge stops before its checkpoint passes them.
    func testASidEqualToTheServersStopsABridgeThatStalledOverWithheldWrites() async throws {
        let (kt, root, c, wrong) = try await idleBridgeWithTheServersSid()
        kill(wrong.pid, SIGSTOP)
        let stoppedAt = ContinuousClock.now
        for i in 0..<2 {
            kt.set("stalled-\(i)", "v\(i)")
            // Not in one millisecond: a stamp with a counter part would tell without the log.
            try await Task.sleep(for: .milliseconds(5))
        }
        // The fault's length: the writes are more than a second old when the bridge reads on.
        try await Task.sleep(until: stoppedAt + .milliseconds(2500))
        kill(wrong.pid, SIGCONT)
        try await assertStopsThenARightSidBrings(wrong, kt, root, c, keys: (0..<2).map { "stalled-\($0)" })
    }

    /// A running bridge with KT's own sid while writes come steadily, one every few
    /// heartbeats' worth of time (fewer than the 256 in a row after which KT says so): each
    /// heartbeat is stamped with a newer withheld write, a whole millisecond never repeated,
    /// which the stamps cannot tell from the clock. KT's update log, read about once a second
    /// whenever a heartbeat would vouch past the last update sent, tells: the checkpoint
    /// stays below the first of them, and a bridge with a right --sid brings every one.
    func testASidEqualToTheServersStopsABridgeUnderSteadyWritesBeforeItsCheckpointPassesAny() async throws {
        let (kt, root, c, wrong) = try await idleBridgeWithTheServersSid()
        // Idle for a few seconds more: the update log has been read and found nothing past
        // the last update, the case in which the heartbeats once vouched on their own.
        let idleSince = ContinuousClock.now
        try await Task.sleep(until: idleSince + .seconds(3))
        var keys = [String]()
        for i in 0..<120 where wrong.isRunning {
            keys.append("steady-\(i)")
            kt.set("steady-\(i)", "v\(i)")
            try await Task.sleep(for: .milliseconds(30))
        }
        try await assertStopsThenARightSidBrings(wrong, kt, root, c, keys: keys, toldByTheLog: false)
    }

    /// A root and a fake KT (sid 7) with a bridge presenting KT's own sid, idle until the
    /// heartbeats moved its checkpoint.
    private func idleBridgeWithTheServersSid() async throws -> (FakeKTProcess, RootNode, QSClient, DaemonProcess) {
        let kt = try FakeKTProcess(logDir: tmp, sid: 7)
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let c = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        let id = "kt:127.0.0.1:\(kt.port)"
        let wrong = try DaemonProcess("qsktbridge", ["--root", root.address, "--source", "kt://\(kt.address)", "--sid", "7", "--db-map", "0=,1=aux/",
                                                     "--initial-copy", "never", "--batch-interval", "100ms", "--log-format", "text"],
                                      logDir: tmp, ready: true)
        try await QSTesting.waitFor("the idle bridge's checkpoint moved by heartbeats", timeout: .seconds(20)) {
            ((try? await c.checkpoint(sourceID: id)) ?? nil ?? 0) > 0
        }
        return (kt, root, c, wrong)
    }

    /// `wrong` (--sid 7, KT's own) stops naming --sid (and the update log, if `toldByTheLog`), and a bridge with a right sid brings
    /// `keys` (each written with value `v<n>`): the checkpoint had not passed them.
    private func assertStopsThenARightSidBrings(_ wrong: DaemonProcess, _ kt: FakeKTProcess, _ root: RootNode, _ c: QSClient,
                                                keys: [String], toldByTheLog: Bool = true) async throws {
        try await QSTesting.waitFor("the bridge to stop", timeout: .seconds(30)) { !wrong.isRunning }
        wrong.process.waitUntilExit()
        XCTAssertNotEqual(wrong.process.terminationStatus, 0)
        XCTAssertTrue(wrong.log.contains("--sid 7"), wrong.log)
        if toldByTheLog {
            XCTAssertTrue(wrong.log.contains("its update log (ulog_list)"), "told by the update log, not the stamps: \(wrong.log)")
        }
        let (right, _) = try bridge(kt, root)
        // Updates apply in KT's order: once the last is there, every one the checkpoint had
        // not passed is too.
        let last = await waitFor(c, keys[keys.count - 1], "v\(keys.count - 1)")
        XCTAssertTrue(last, right.log)
        let state = try await dumpState(c)
        let missing = keys.enumerated().filter { state[Array($0.element.utf8)]?.value != Array("v\($0.offset)".utf8) }.map(\.element)
        XCTAssertEqual(missing, [], "the checkpoint passed withheld writes: \(right.log)")
        XCTAssertEqual(try right.stop(), 0)
        await c.close()
    }

    /// An idle bridge reads KT's update log about once a second, all on one connection kept
    /// open beside the replication stream (a connection a reading was churn on KT); a kept
    /// connection KT closed (idle past its `-tout`) is opened again without a failed reading.
    func testUpdateLogReadingsShareOneKeptConnectionAndOneKTClosedIsOpenedAgain() async throws {
        for (tout, shared) in [("30", true), ("0.4", false)] {
            let kt = try FakeKTProcess(logDir: tmp, faults: ["-tout", tout])
            let proxy = try FaultProxy(upstreamPort: kt.port)
            defer { proxy.close() }
            let root = try RootNode(data: tmp.appendingPathComponent("root-\(tout)"), logDir: tmp)
            let (b, admin) = try bridge(kt, root, source: proxy.address)
            func reads() -> Double { metricValue(port: admin, "qs_bridge_kt_log_reads_total") ?? 0 }
            XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { reads() >= 5 }, "-tout \(tout): \(reads()) readings; \(b.log)")
            XCTAssertEqual(metricValue(port: admin, "qs_bridge_kt_log_read_failures_total"), 0,
                           "-tout \(tout): a connection KT closed is opened again for the same reading: \(b.log)")
            if shared {
                XCTAssertEqual(proxy.connectionsAccepted, 2, "the replication stream and one connection for \(reads()) readings")
            } else {
                XCTAssertGreaterThan(proxy.connectionsAccepted, 3, "KT closed the kept connection between readings")
            }
            XCTAssertEqual(httpGet(port: admin, path: "/readyz")?.status, 200, b.log)
            XCTAssertEqual(try b.stop(), 0, b.log)
        }
    }

    func testThreeLiveBridgesWithOneSourceIDUnderAWorkloadAreHarmless() async throws {
        let kt = try FakeKTProcess(logDir: tmp)
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let bridges = try (0..<3).map { _ in try bridge(kt, root, extra: ["--source-id", "kt-live", "--batch-max-ops", "7"]).0 }
        for i in 0..<300 {
            kt.set("key\(i % 40)", "value\(i)")
            if i % 7 == 0 { kt.remove("key\((i + 3) % 40)") }
            if i % 11 == 0 { kt.set("aux\(i)", "a\(i)", db: 1) }
        }
        kt.set("last", "done")
        let c = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        let done = await waitFor(c, "last", "done", timeout: .seconds(60))
        XCTAssertTrue(done)
        // KT's own state, read back over its RPC, equals the root's.
        let want = kt.state(prefixes: [0: "", 1: "aux/"])
        XCTAssertGreaterThan(want.count, 40, "KT holds the workload's keys")
        let got = try await dumpState(c).mapValues(\.value)
        XCTAssertEqual(got, want)
        _ = try await verifyLog(c, sourceID: "kt-live")
        for b in bridges { XCTAssertEqual(try b.stop(), 0, b.log) }
        await c.close()
    }

    func testSIGTERMUnderAWorkloadAppliesEverythingReadExactlyOnce() async throws {
        let kt = try FakeKTProcess(logDir: tmp)
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let (b, admin) = try bridge(kt, root, extra: ["--source-id", "kt", "--batch-interval", "2s", "--shutdown-timeout", "20s"])
        let c = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        // Keep writing while the bridge is stopped, so it has read changes it has not yet written.
        let writer = Task.detached {
            for i in 0..<400 {
                kt.set("w\(i % 50)", "v\(i)")
                if Task.isCancelled { break }
            }
        }
        // Should a step below fail, the workload does not outlive the test.
        addTeardownBlock {
            writer.cancel()
            _ = await writer.value
        }
        XCTAssertTrue(Harness.waitUntil { (metricValue(port: admin, "qs_bridge_changes_read_total") ?? 0) >= 50 })
        XCTAssertEqual(try b.stop(signal: SIGTERM), 0, b.log)
        writer.cancel()
        _ = await writer.value
        // Everything read before the signal was applied: the checkpoint is the last position read.
        let line = b.log.split(separator: "\n").first { $0.contains("pending batch flushed") }.map(String.init) ?? ""
        let readUpTo = line.components(separatedBy: "read-up-to=").dropFirst().first?.split(separator: " ").first.flatMap { UInt64($0) }
        let cp = try await c.checkpoint(sourceID: "kt")
        XCTAssertNotNil(readUpTo, b.log)
        XCTAssertEqual(cp, readUpTo, "every change read before SIGTERM is applied")
        // A new bridge resumes from there; at the end the root equals KT and no position was applied twice.
        kt.set("final", "yes")
        let (b2, _) = try bridge(kt, root, extra: ["--source-id", "kt"])
        let done = await waitFor(c, "final", "yes", timeout: .seconds(30))
        XCTAssertTrue(done)
        let positions = try await verifyLog(c, sourceID: "kt")
        XCTAssertFalse(positions.isEmpty)
        let r = kt.rpc("match_prefix", [("prefix", Array("w".utf8)), ("max", Array("1000".utf8))])
        let count = r.body.split(separator: "\n").filter { $0.hasPrefix("_") }.count
        let state = try await dumpState(c)
        XCTAssertEqual(state.keys.filter { $0.starts(with: Array("w".utf8)) }.count, count)
        for (k, v) in state where k.starts(with: Array("w".utf8)) {
            let got = kt.rpc("get", [("key", k)]).body.split(separator: "\n").first { $0.hasPrefix("value\t") }.map { Array($0.dropFirst(6).utf8) }
            XCTAssertEqual(got, v.value, String(decoding: k, as: UTF8.self))
        }
        XCTAssertEqual(try b2.stop(), 0)
        await c.close()
    }

    func testSilentSlowAndRefusingKTServersAreSurvived() async throws {
        // No heartbeats: the source timeout re-makes the connection; delayed frames still arrive;
        // refused connections are retried with backoff.
        for (fault, extra) in [(["-fault-no-heartbeat"], ["--source-timeout", "1s"]), (["-fault-delay-ms", "20"], []),
                               (["-fault-refuse-count", "3"], [])] {
            let kt = try FakeKTProcess(logDir: tmp, faults: fault)
            let root = try RootNode(data: tmp.appendingPathComponent("root-\(fault[0])"), logDir: tmp)
            let (b, admin) = try bridge(kt, root, extra: extra)
            if fault[0] == "-fault-refuse-count" {
                // Nothing else connects to KT until the bridge is through: it meets every refusal.
                try await QSTesting.waitFor("the bridge through KT's refusals and ready", timeout: .seconds(30)) {
                    httpGet(port: admin, path: "/readyz")?.status == 200
                }
            }
            // Writes are retried while fakekt refuses connections (its HTTP port included).
            func set(_ k: String, _ v: String) {
                _ = Harness.waitUntil(timeout: .seconds(10)) {
                    kt.rpc("set", [("key", Array(k.utf8)), ("value", Array(v.utf8))]).status == 200
                }
            }
            for i in 0..<20 { set("key\(i)", "value\(i)") }
            let c = try await QSClient.connect(host: "127.0.0.1", port: root.port)
            let first = await waitFor(c, "key19", "value19", timeout: .seconds(60))
            XCTAssertTrue(first, "\(fault): \(b.log)")
            if fault[0] == "-fault-no-heartbeat" {
                XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { b.log.contains("source failed") }, "\(fault): idle without heartbeats: \(b.log)")
            }
            if fault[0] == "-fault-refuse-count" {
                XCTAssertGreaterThanOrEqual(metricValue(port: admin, "qs_bridge_reconnects_total") ?? 0, 1, b.log)
                XCTAssertEqual(metricValue(port: admin, "qs_bridge_root_reconnects_total"), 0, "the source's reconnections, not the root's: \(b.log)")
            }
            set("after", "fault")
            let after = await waitFor(c, "after", "fault", timeout: .seconds(60))
            XCTAssertTrue(after, "\(fault): \(b.log)")
            _ = try await verifyLog(c, sourceID: "kt:127.0.0.1:\(kt.port)")
            await c.close()
            XCTAssertEqual(try b.stop(), 0)
        }
    }
}
