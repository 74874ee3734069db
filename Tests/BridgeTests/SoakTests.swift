import Foundation
import QSClient
import QSModel
import QSTesting
import XCTest

/// The kill loops at scale (`make soak`; a short version runs in `make test`): under a live
/// KT workload, SIGKILL a `qsktbridge` again and again, then the root again and again while
/// two duplicate bridges run at once, then replicas in the middle of their bootstrap; at
/// the end count lost, duplicated and differing keys (all must be 0) and the time the
/// tree takes to converge once the workload stops.
///
/// Every value the workload writes carries its key's sequence number (`SEQ|padding`, one
/// writer per key), so an update applied twice shows in the root's log as a key whose
/// sequence does not increase, and a position applied twice as a source position that does
/// not increase.
///
/// Sizes come from `QS_SOAK_*` variables (`SoakSettings`); the defaults are the short run.
final class SoakTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("soak")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    func testKillLoopsUnderALiveWorkloadLoseNothingAndApplyNothingTwice() async throws {
        let s = try SoakSettings(ProcessInfo.processInfo.environment)
        let started = ContinuousClock.now
        print("soak: settings \(s)")
        let kt = try FakeKTProcess(logDir: tmp, databases: ["main.kch"])
        let socket = tmp.appendingPathComponent("root.sock").path
        let rootData = tmp.appendingPathComponent("root")
        var root = try RootNode(data: rootData, logDir: tmp, extraArgs: ["--unix", socket])
        let sourceID = "soak"
        let bridgeArgs = ["--root", "unix:\(socket)", "--source", "kt://\(kt.address)", "--db-map", "0=", "--initial-copy", "never",
                          "--sid", "99", "--source-id", sourceID, "--batch-interval", "100ms", "--batch-max-ops", "64",
                          "--log-format", "text"]
        let rootClient = ReconnectingClient(unixPath: socket)
        func checkpoint() async -> UInt64? {
            await rootClient.call { try await $0.checkpoint(sourceID: sourceID) } ?? nil
        }
        /// Waits until the root's checkpoint passes `than`; returns how long that took.
        func progress(past than: UInt64, _ what: String) async throws -> Duration {
            let t0 = ContinuousClock.now
            try await waitFor(what, timeout: .seconds(120), pollEvery: .milliseconds(10)) { (await checkpoint() ?? 0) > than }
            return ContinuousClock.now - t0
        }

        let workload = SeqWorkload(kt: kt, writers: s.writers, keysPerWriter: s.keys / s.writers, valueBytes: s.valueBytes,
                                   bulk: s.bulk, every: s.writeEvery)
        // The workload's threads hold on to `kt`, so its process is stopped here rather than
        // left to a deinit that would come too late.
        addTeardownBlock {
            _ = workload.stop()
            _ = try? kt.daemon.stop()
        }

        // 1. A bridge killed again and again, alone.
        var recoveries = [Duration]()
        var last = await checkpoint() ?? 0
        var bridgeKills = 0
        for i in 0..<s.bridgeKills {
            let b = try DaemonProcess("qsktbridge", bridgeArgs, logDir: tmp)
            recoveries.append(try await progress(past: last, "bridge run \(i) applying past \(last)"))
            try await Task.sleep(for: .milliseconds(Int.random(in: 0..<300)))
            try b.stop(signal: SIGKILL)
            bridgeKills += 1
            last = await checkpoint() ?? 0
        }

        // 2. Two duplicate bridges at once; the root killed again and again under them.
        let duplicates = try (0..<2).map { _ in try DaemonProcess("qsktbridge", bridgeArgs, logDir: tmp) }
        _ = try await progress(past: last, "the duplicate bridges applying")
        var rootKills = 0, acknowledgedLost = 0
        for i in 0..<s.rootKills {
            try await Task.sleep(for: .milliseconds(Int.random(in: 0..<500)))
            let acknowledged = await checkpoint() ?? 0
            try root.daemon.stop(signal: SIGKILL)
            rootKills += 1
            root = try RootNode(data: rootData, logDir: tmp, extraArgs: ["--unix", socket])
            // What the root acknowledged before the kill is there after it.
            if let after = await checkpoint(), after < acknowledged { acknowledgedLost += 1 }
            recoveries.append(try await progress(past: acknowledged, "root run \(i) applying past \(acknowledged)"))
        }
        for b in duplicates { XCTAssertTrue(b.isRunning, "a duplicate bridge died:\n\(b.log)") }

        // 3. Replicas killed in the middle of their bootstrap: the snapshot passes a proxy
        // capped so that a copy of the root's files takes about three seconds.
        let proxy = try FaultProxy(upstreamPort: root.port)
        defer { proxy.close() }
        try await waitFor("the root's store size measured", timeout: .seconds(15), pollEvery: .milliseconds(100)) {
            (root.metric("qs_store_map_used_bytes") ?? 0) > 0
        }
        let rootBytes = Int(root.metric("qs_store_map_used_bytes") ?? 0)
        proxy.fault = .bandwidth(bytesPerSecond: max(32 * 1024, rootBytes / 3))
        let replicaData = tmp.appendingPathComponent("replica")
        var replicaKills = 0, killedMidBootstrap = 0
        for i in 0..<s.replicaKills {
            // The in-store bootstrap: the node serves while its snapshot arrives, so it can be
            // killed mid-way (the into-data-dir bootstrap is tested in BootstrapResumeTests).
            let r = try ReplicaNode(data: replicaData, upstreams: [proxy.address], logDir: tmp,
                                    extraArgs: ["--bootstrap-into-data-dir", "false"])
            try await waitFor("replica run \(i) requesting a snapshot", timeout: .seconds(60), pollEvery: .milliseconds(5)) {
                r.daemon.log.contains("bootstrap: requesting a snapshot")
            }
            try await Task.sleep(for: .milliseconds(Int.random(in: 100..<1_500)))
            let installed = r.daemon.log.contains("bootstrap installed")
            try r.daemon.stop(signal: SIGKILL)
            replicaKills += 1
            if !installed { killedMidBootstrap += 1 }
        }
        proxy.fault = .none
        let replica = try ReplicaNode(data: replicaData, upstreams: [proxy.address], logDir: tmp)

        // 4. The workload stops; the tree converges.
        let writes = workload.stop()
        let quiet = ContinuousClock.now
        kt.set("soak-end", "\(writes.updates)")
        let c = try await QSClient.connect(unixPath: socket)
        let r = try await QSClient.connect(host: "127.0.0.1", port: replica.port)
        try await waitFor("the root holding the workload's last write", timeout: .seconds(120), pollEvery: .milliseconds(10)) {
            (try? await c.get(Array("soak-end".utf8)))?.value == Array("\(writes.updates)".utf8)
        }
        let rootConverged = ContinuousClock.now - quiet
        let rootHead = try await c.head()
        try await waitFor("the replica at the root's head", timeout: .seconds(120), pollEvery: .milliseconds(10)) {
            guard let h = try? await r.head() else { return false }
            return h.index >= rootHead.index
        }
        let treeConverged = ContinuousClock.now - quiet

        // 5. Counting.
        let want = kt.state(prefixes: [0: ""])
        let got = try await dumpState(c).mapValues(\.value)
        let replicaGot = try await dumpState(r).mapValues(\.value)
        let log = try await SoakLog.read(c, sourceID: sourceID)
        let replicaHead = try await r.head()
        var lost = 0, differing = 0
        for (key, value) in want {
            guard let have = got[key] else {
                lost += 1
                continue
            }
            if have != value {
                differing += 1
                if let a = SeqWorkload.sequence(have), let b = SeqWorkload.sequence(value), a < b { lost += 1 }
            }
        }
        differing += got.keys.filter { want[$0] == nil }.count
        let replicaDiffering = Set(got.keys).union(replicaGot.keys).filter { got[$0] != replicaGot[$0] }.count
        let duplicated = log.positionsAgain + log.sequencesAgain
        let summary = """
            soak: bridge SIGKILLs \(bridgeKills), root SIGKILLs \(rootKills) (two duplicate bridges running), \
            replica SIGKILLs \(replicaKills) (\(killedMidBootstrap) mid-bootstrap), root store \(rootBytes) bytes
            soak: workload \(writes.updates) updates to \(want.count) keys in \(Self.seconds(writes.elapsed)) s \
            (\(Int(Double(writes.updates) / max(writes.elapsed.seconds, 0.001))) updates/s), \(log.entries) log entries of \(sourceID)
            soak: lost \(lost), duplicated \(duplicated) (positions \(log.positionsAgain), key sequences \(log.sequencesAgain)), \
            differing \(differing), replica differing \(replicaDiffering), acknowledged writes lost on root kills \(acknowledgedLost)
            soak: converged in \(Self.seconds(rootConverged)) s (root), \(Self.seconds(treeConverged)) s (replica); \
            recovery after a kill: median \(Self.seconds(recoveries.median)) s, max \(Self.seconds(recoveries.max() ?? .zero)) s; \
            whole run \(Self.seconds(ContinuousClock.now - started)) s
            """
        print(summary)
        if let path = ProcessInfo.processInfo.environment["QS_SOAK_REPORT"], !path.isEmpty {
            try Data((summary + "\n").utf8).write(to: URL(fileURLWithPath: path))
        }
        XCTAssertEqual(bridgeKills, s.bridgeKills)
        XCTAssertEqual(rootKills, s.rootKills)
        XCTAssertEqual(replicaKills, s.replicaKills)
        if s.replicaKills > 0 { XCTAssertGreaterThan(killedMidBootstrap, 0, "no replica was killed during its bootstrap") }
        XCTAssertGreaterThan(want.count, s.keys / 2, "KT holds the workload's keys")
        XCTAssertEqual(lost, 0)
        XCTAssertEqual(duplicated, 0)
        XCTAssertEqual(differing, 0)
        XCTAssertEqual(replicaDiffering, 0)
        XCTAssertEqual(acknowledgedLost, 0)
        let rootHeadAtEnd = try await c.head()
        XCTAssertEqual(replicaHead, rootHeadAtEnd, "the replica holds the root's history")
        for b in duplicates { XCTAssertEqual(try b.stop(), 0, b.log) }
        await c.close()
        await r.close()
        await rootClient.close()
    }

    static func seconds(_ d: Duration) -> String { String(format: "%.2f", d.seconds) }
}

/// One connection to a root that is killed and restarted behind the same Unix socket:
/// a call that fails drops the connection, the next one makes a new one.
actor ReconnectingClient {
    let unixPath: String
    private var client: QSClient?

    init(unixPath: String) { self.unixPath = unixPath }

    func call<T: Sendable>(_ body: @Sendable (QSClient) async throws -> T) async -> T? {
        do {
            if client == nil { client = try await QSClient.connect(unixPath: unixPath) }
            guard let client else { return nil }
            return try await body(client)
        } catch {
            await client?.close()
            client = nil
            return nil
        }
    }

    func close() async {
        await client?.close()
        client = nil
    }
}

/// The soak's sizes: `QS_SOAK_BRIDGE_KILLS`, `QS_SOAK_ROOT_KILLS`, `QS_SOAK_REPLICA_KILLS`,
/// `QS_SOAK_KEYS`, `QS_SOAK_VALUE_BYTES`, `QS_SOAK_WRITERS`, `QS_SOAK_BULK` (updates per
/// KT `set_bulk`), `QS_SOAK_WRITE_EVERY_MS` (pause between a writer's calls).
struct SoakSettings: CustomStringConvertible {
    var bridgeKills = 5, rootKills = 2, replicaKills = 2
    var keys = 200, valueBytes = 100, writers = 1, bulk = 8, writeEveryMs = 5

    init(_ env: [String: String]) throws {
        func int(_ name: String, _ value: inout Int, min: Int) throws {
            guard let text = env[name], !text.isEmpty else { return }
            guard let v = Int(text), v >= min else { throw HarnessError("\(name)=\(text): expected a whole number ≥ \(min)") }
            value = v
        }
        try int("QS_SOAK_BRIDGE_KILLS", &bridgeKills, min: 0)
        try int("QS_SOAK_ROOT_KILLS", &rootKills, min: 0)
        try int("QS_SOAK_REPLICA_KILLS", &replicaKills, min: 0)
        try int("QS_SOAK_KEYS", &keys, min: 1)
        try int("QS_SOAK_VALUE_BYTES", &valueBytes, min: 0)
        try int("QS_SOAK_WRITERS", &writers, min: 1)
        try int("QS_SOAK_BULK", &bulk, min: 1)
        try int("QS_SOAK_WRITE_EVERY_MS", &writeEveryMs, min: 0)
        keys = max(keys, writers)
    }

    var writeEvery: TimeInterval { Double(writeEveryMs) / 1000 }

    var description: String {
        "bridge kills \(bridgeKills), root kills \(rootKills), replica kills \(replicaKills), keys \(keys), value bytes \(valueBytes), "
            + "writers \(writers), bulk \(bulk), every \(writeEveryMs) ms"
    }
}

/// KT writers, each owning its keys (`w<writer>-<n>`), writing `SEQ|padding` with the
/// key's next sequence number through `set_bulk`, and now and then removing a key (its
/// next write goes on from the same sequence).
final class SeqWorkload: @unchecked Sendable {
    private let workloads: [KTWorkload]
    private let counts: [Counted]
    private let started = ContinuousClock.now

    final class Counted: @unchecked Sendable {
        let lock = NSLock()
        var updates = 0
        func add(_ n: Int) { lock.withLock { updates += n } }
        var value: Int { lock.withLock { updates } }
    }

    init(kt: FakeKTProcess, writers: Int, keysPerWriter: Int, valueBytes: Int, bulk: Int, every: TimeInterval) {
        let padding = String(repeating: "x", count: valueBytes)
        var counts = [Counted]()
        workloads = (0..<writers).map { w in
            let counted = Counted()
            counts.append(counted)
            let sequences = Sequences(count: keysPerWriter)
            return KTWorkload(every: every) { i in
                var params = [(String, [UInt8])]()
                for b in 0..<bulk {
                    let n = (i * bulk + b) % keysPerWriter
                    params.append(("_w\(w)-\(n)", Array("\(sequences.next(n))|\(padding)".utf8)))
                }
                if kt.rpc("set_bulk", params).status == 200 { counted.add(bulk) }
                if i % 50 == 49, kt.rpc("remove", [("key", Array("w\(w)-\(i % keysPerWriter)".utf8))]).status == 200 { counted.add(1) }
            }
        }
        self.counts = counts
    }

    /// Per-key counters of one writer (its thread only).
    final class Sequences: @unchecked Sendable {
        var values: [Int]
        init(count: Int) { values = Array(repeating: 0, count: count) }
        func next(_ n: Int) -> Int {
            values[n] += 1
            return values[n]
        }
    }

    /// Stops every writer; how many updates KT acknowledged, and over how long.
    @discardableResult
    func stop() -> (updates: Int, elapsed: Duration) {
        for w in workloads { w.stop() }
        return (counts.reduce(0) { $0 + $1.value }, ContinuousClock.now - started)
    }

    /// The sequence number a workload value starts with.
    static func sequence(_ value: [UInt8]) -> Int? {
        guard let bar = value.firstIndex(of: UInt8(ascii: "|")) else { return nil }
        return Int(String(decoding: value[..<bar], as: UTF8.self))
    }
}

/// A root's whole log read and checked: consecutive indexes, an unbroken hash chain;
/// counts of a source's positions that do not increase (a position applied again) and of
/// workload keys whose sequence does not increase (an update applied again).
struct SoakLog {
    var entries = 0, positionsAgain = 0, sequencesAgain = 0

    static func read(_ client: QSClient, sourceID: String) async throws -> SoakLog {
        var out = SoakLog()
        var lastPosition: UInt64 = 0
        var lastSequence = [[UInt8]: Int]()
        try await walkLog(client) { _, entry in
            // A descriptor's entry (the bridge's --db-map, recorded once) is no position.
            guard entry.origin.sourceID == sourceID, entry.movesCheckpoint else { return }
            out.entries += 1
            if entry.origin.position <= lastPosition { out.positionsAgain += 1 }
            lastPosition = max(lastPosition, entry.origin.position)
            for case let .set(key, value, _) in entry.operations {
                guard let seq = SeqWorkload.sequence(value) else { continue }
                if let before = lastSequence[key], seq <= before { out.sequencesAgain += 1 }
                lastSequence[key] = max(seq, lastSequence[key] ?? 0)
            }
        }
        return out
    }
}

extension Array where Element == Duration {
    var median: Duration { isEmpty ? .zero : sorted()[count / 2] }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
