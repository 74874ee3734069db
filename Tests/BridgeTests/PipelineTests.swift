import Foundation
import QSClient
import QSTesting
import XCTest

/// `qsktbridge` with two batches in flight (`--batches-in-flight 2`, the default) against a
/// real root behind a `FaultProxy` that can hold the root's answers: the second batch
/// reaches the root and is committed before the bridge has the first one's answer; a cut
/// with both answers owed, and a second bridge on the same source id racing it, leave every
/// source position applied once and the root equal to KT (`qsctl verify --kt`).
final class PipelineTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("pipeline")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    /// KT, a root, a proxy in front of the root and a bridge writing through it in batches of
    /// 10 sets, following KT's update log from its start (no initial copy).
    struct Setup {
        let kt: FakeKTProcess
        let root: RootNode
        let proxy: FaultProxy
        let bridge: DaemonProcess
        let client: QSClient
        var written = 0

        /// Sets `count` new keys in KT, each with a value of its own.
        mutating func writeKT(_ count: Int) {
            for _ in 0..<count {
                kt.set("k\(written)", "v\(written)")
                written += 1
            }
        }

        func head() async throws -> UInt64 { try await client.head().index }

        func metric(_ bridge: DaemonProcess, _ name: String) -> Double {
            (try? bridge.port("admin")).flatMap { metricValue(port: $0, name) } ?? 0
        }

        func has(_ key: String) async -> Bool { (try? await client.get(Array(key.utf8))) != nil }

        func equalToKT() async -> Bool {
            guard let state = try? await dumpState(client) else { return false }
            return state.mapValues(\.value) == kt.state(prefixes: [0: ""])
        }
    }

    /// `interval`: the bridges' `--batch-interval` (an hour: only the ops cap sends a batch;
    /// `--no-flush-when-caught-up`, or a KT NOP between two writes would end a batch short).
    func start(interval: String = "1h") async throws -> Setup {
        let kt = try FakeKTProcess(logDir: tmp)
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let proxy = try FaultProxy(upstreamPort: root.port)
        let bridge = try DaemonProcess("qsktbridge", bridgeArgs(kt: kt, root: proxy.address, interval: interval), logDir: tmp, ready: true)
        let client = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        var s = Setup(kt: kt, root: root, proxy: proxy, bridge: bridge, client: client)
        // One batch through the open wire: the bridge has just had an answer (its keepalive
        // asks the root nothing for a second after one), then the answers are held.
        s.writeKT(10)
        // The bridge's first write records its --db-map (entry 1), then its first batch.
        try await waitFor("the first batch applied", timeout: .seconds(20), pollEvery: .milliseconds(5)) { try await s.head() == 2 }
        // And its answer taken by the bridge: one still on its way when the answers are held
        // would keep a place of the bridge's two in flight.
        try await waitFor("the first batch's answer at the bridge", timeout: .seconds(20), pollEvery: .milliseconds(5)) {
            s.metric(s.bridge, "qs_bridge_batches_applied_total") >= 1
        }
        return s
    }

    func bridgeArgs(kt: FakeKTProcess, root: String, interval: String) -> [String] {
        ["--root", root, "--source", "kt://\(kt.address)", "--source-id", "kt", "--db-map", "0=", "--sid", "99",
         "--initial-copy", "never", "--batch-max-ops", "10", "--batch-interval", interval, "--no-flush-when-caught-up", "--admin", "127.0.0.1:0", "--log-format", "text"]
    }

    /// While the root's answers are held, the root still receives and commits the next two
    /// batches (the second sent on the first's new position, before its answer), and no
    /// third: the bridge waits for the first answer with two in flight. One batch at a time
    /// would leave the root at one more entry, and this wait would time out.
    func testSecondBatchReachesTheRootBeforeTheFirstIsAnswered() async throws {
        var s = try await start()
        try await holdTwoBatches(&s)
        let head = try await s.head()
        XCTAssertEqual(head, 4, "a third batch went out before the first answer")
        let state = try await dumpState(s.client)
        XCTAssertEqual(Set(state.keys.map { String(decoding: $0, as: UTF8.self) }), Set((0..<30).map { "k\($0)" }))
        s.proxy.fault = .none
        try await waitFor("the rest applied once the answers pass", timeout: .seconds(20), pollEvery: .milliseconds(20)) { await s.equalToKT() }
        let positions = try await verifyLog(s.client, sourceID: "kt")
        XCTAssertEqual(positions.count, 4, "four batches of ten, each position once")
        XCTAssertEqual(try s.bridge.stop(), 0, s.bridge.log)
        s.proxy.close()
        await s.client.close()
    }

    /// The connection is reset while two committed batches' answers are held: both outcomes
    /// are unknown to the bridge, which reconnects and sends from the checkpoint it had
    /// confirmed; the root answers `conflict` at the second batch's end, and nothing is
    /// applied twice.
    func testConnectionCutWithTwoBatchesInFlightAppliesNothingTwice() async throws {
        var s = try await start()
        try await holdTwoBatches(&s)
        s.proxy.fault = .reset
        try await waitFor("the bridge lost its connection", timeout: .seconds(10)) { s.metric(s.bridge, "qs_bridge_reconnects_total") >= 1 }
        XCTAssertGreaterThanOrEqual(s.metric(s.bridge, "qs_bridge_root_reconnects_total"), 1, "the root's connection was the one cut")
        XCTAssertEqual(s.metric(s.bridge, "qs_bridge_source_errors_total"), 0, "KT's connection was not cut")
        s.proxy.fault = .none
        s.writeKT(10)
        try await waitFor("the root equal to KT after the cut", timeout: .seconds(30), pollEvery: .milliseconds(20)) { await s.equalToKT() }
        XCTAssertGreaterThanOrEqual(s.metric(s.bridge, "qs_bridge_conflicts_total"), 1, "the batches sent again met the root's checkpoint")
        XCTAssertFalse(s.bridge.log.contains("another writer"), "its own batches, not another writer's: \(s.bridge.log)")
        let positions = try await verifyLog(s.client, sourceID: "kt"), head = try await s.head()
        XCTAssertEqual(UInt64(positions.count) + 1, head, "every entry but the descriptor's a new position of the source")
        try verifyKT(s)
        XCTAssertEqual(try s.bridge.stop(), 0, s.bridge.log)
        s.proxy.close()
        await s.client.close()
    }

    /// A second bridge on the same source id starts while the first has two committed
    /// batches' answers held, and applies what KT takes next; then the first gets its
    /// answers and races it (its next batch meets the second's checkpoint), and its
    /// connection is cut once more while KT takes writes. Each source position is applied
    /// once, and `qsctl verify --kt` finds the root equal to KT.
    func testDuplicateBridgeRacingTwoBatchesInFlightIsHarmless() async throws {
        var s = try await start(interval: "100ms")
        try await holdTwoBatches(&s)
        let second = try DaemonProcess("qsktbridge", bridgeArgs(kt: s.kt, root: s.root.address, interval: "100ms"), logDir: tmp, ready: true)
        s.writeKT(40)
        try await waitFor("the second bridge applied what the first has not read", timeout: .seconds(20), pollEvery: .milliseconds(20)) {
            await s.has("k\(s.written - 1)")
        }
        s.proxy.fault = .none
        s.writeKT(20)
        let before = s.metric(s.bridge, "qs_bridge_reconnects_total")
        s.proxy.fault = .reset
        try await waitFor("the first bridge lost its connection", timeout: .seconds(10)) { s.metric(s.bridge, "qs_bridge_reconnects_total") > before }
        s.proxy.fault = .none
        s.writeKT(20)
        try await waitFor("the root equal to KT with two bridges", timeout: .seconds(30), pollEvery: .milliseconds(20)) { await s.equalToKT() }
        let positions = try await verifyLog(s.client, sourceID: "kt"), head = try await s.head()
        XCTAssertEqual(UInt64(positions.count) + 1, head, "every entry but the descriptor's a new position of the source")
        XCTAssertGreaterThanOrEqual(s.metric(s.bridge, "qs_bridge_conflicts_total"), 1, "the first bridge met the second's batches")
        try verifyKT(s)
        XCTAssertEqual(try second.stop(), 0, second.log)
        XCTAssertEqual(try s.bridge.stop(), 0, s.bridge.log)
        s.proxy.close()
        await s.client.close()
    }

    /// Holds the root's answers and writes 30 sets to KT: returns once the root has
    /// committed two more batches, their answers still held.
    func holdTwoBatches(_ s: inout Setup) async throws {
        s.proxy.fault = .holdReplies
        s.writeKT(30)
        let client = s.client
        try await waitFor("two batches committed with no answer back", timeout: .seconds(10), pollEvery: .milliseconds(5)) {
            try await client.head().index >= 4
        }
    }

    func verifyKT(_ s: Setup) throws {
        let verify = try Harness.run("qsctl", ["--node", s.root.address, "verify", "--kt", s.kt.address, "--db-map", "0="])
        XCTAssertEqual(verify.status, 0, String(decoding: verify.stdout + verify.stderr, as: UTF8.self))
    }
}
