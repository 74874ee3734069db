import Foundation
import QSClient
import QSModel
import QSTesting

/// The `cluster` suite: write throughput and commit latency of a 3-member root cluster on a
/// real 3-member etcd (all on this machine, on `scratch`'s disk), against a single root in
/// the same run, at each batch size: one writer sends a batch, waits for its answer (the
/// acknowledgement: committed by etcd's quorum and applied by the member), sends the next.
/// The two targets alternate each round; medians over the rounds. Then the failover time of
/// a `qsqsbridge` given the three members when the member it writes to is SIGKILLed.
struct ClusterBench {
    let sizes: [Int]
    let duration: Duration
    let rounds: Int
    let valueBytes: Int
    let scratch: String
    let binDir: URL
    let failovers: Int

    struct Target: Codable {
        var opsPerSec: Double
        var batchesPerSec: Double
        var p50Millis: Double
        var p99Millis: Double
    }

    struct Row: Codable {
        var batchSize: Int
        var single: Target
        var cluster: Target
        /// cluster ops/s over single root ops/s.
        var ratio: Double
        var singleRounds: [Target]
        var clusterRounds: [Target]
    }

    struct Report: Codable {
        var benchmark = "cluster"
        var recordedAt: String
        var valueBytes: Int
        var secondsPerMeasurement: Double
        var rounds: Int
        var rows: [Row]
        /// From the SIGKILL of the bridge's member to its next batch committed through another.
        var failoverMillis: [Double]
        var note = "one writer, one batch in flight; latency = the batch's round trip until acknowledged (cluster: etcd quorum commit + the member applied it; single root: its LMDB commit); 3 etcd members and 3 root members share this machine's cores and disk"
    }

    func run() async throws -> Report {
        let dir = URL(fileURLWithPath: scratch).appendingPathComponent("cluster")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let etcd = try EtcdCluster(dir: dir, logDir: dir)
        defer { etcd.stop() }
        let members = try (0..<3).map { try startMember($0, etcd: etcd, dir: dir) }
        let single = try startDaemon(binDir, dir.path, "qsnode", ["--role", "root", "--data", dir.appendingPathComponent("single").path,
                                                                   "--listen", "127.0.0.1:0", "--log-level", "warning"])
        defer {
            _ = try? single.stop()
            for m in members { _ = try? m.stop() }
        }
        let memberPort = try members[0].port("write"), singlePort = try single.port("write")
        let values = (0..<1024).map { i in (0..<valueBytes).map { UInt8(truncatingIfNeeded: ($0 &* 31) ^ i) } }

        var rows = [Row]()
        for size in sizes {
            var s = [Target](), c = [Target]()
            for round in 0..<rounds {
                s.append(try await measure(port: singlePort, batchSize: size, sourceID: "single-\(size)-\(round)", values: values))
                c.append(try await measure(port: memberPort, batchSize: size, sourceID: "cluster-\(size)-\(round)", values: values))
                FileHandle.standardError.write(Data(String(format: "cluster: batch %d round %d/%d: single %.0f ops/s p99 %.1f ms, cluster %.0f ops/s p99 %.1f ms\n",
                                                           size, round + 1, rounds, s.last?.opsPerSec ?? 0, s.last?.p99Millis ?? 0,
                                                           c.last?.opsPerSec ?? 0, c.last?.p99Millis ?? 0).utf8))
            }
            let single = Self.medianTarget(s), cluster = Self.medianTarget(c)
            rows.append(Row(batchSize: size, single: single, cluster: cluster, ratio: cluster.opsPerSec / max(single.opsPerSec, 1),
                            singleRounds: s, clusterRounds: c))
        }
        let failover = try await failovers(members: members, etcd: etcd, dir: dir)
        return Report(recordedAt: ISO8601DateFormatter().string(from: Date()), valueBytes: valueBytes, secondsPerMeasurement: duration.seconds,
                      rounds: rounds, rows: rows, failoverMillis: failover)
    }

    /// Member `i` of the cluster on its data directory, with a Unix socket that outlives a
    /// restart (the bridge's address for it).
    func startMember(_ i: Int, etcd: EtcdCluster, dir: URL) throws -> DaemonProcess {
        try startDaemon(binDir, dir.path, "qsnode", ["--role", "root", "--data", dir.appendingPathComponent("m\(i)").path,
                                                      "--listen", "127.0.0.1:0", "--unix", socket(i, dir: dir), "--etcd", etcd.urls,
                                                      "--cluster", "bench", "--log-level", "warning"])
    }

    func socket(_ i: Int, dir: URL) -> String { dir.appendingPathComponent("m\(i).sock").path }

    /// One writer for `duration`: each batch's round trip until acknowledged.
    func measure(port: Int, batchSize: Int, sourceID: String, values: [[UInt8]]) async throws -> Target {
        let client = try await QSClient.connect(host: "127.0.0.1", port: port)
        var latencies = [Double](), i = 0, done: UInt64 = 0
        let start = ContinuousClock.now
        while ContinuousClock.now - start < duration {
            var ops = [Mutation]()
            ops.reserveCapacity(batchSize)
            for _ in 0..<batchSize {
                ops.append(.set(key: Array("\(sourceID)/\(benchKey(i % 100_000))".utf8), value: values[i & 1023], expiry: nil))
                i += 1
            }
            let t0 = ContinuousClock.now
            let r = try await client.batch(sourceID: sourceID, expected: done, new: done + 1, operations: ops)
            guard case .applied = r else { throw BenchError("cluster bench: unexpected answer \(r)") }
            latencies.append((ContinuousClock.now - t0).seconds * 1000)
            done += 1
        }
        let elapsed = (ContinuousClock.now - start).seconds
        await client.close()
        latencies.sort()
        func pct(_ p: Double) -> Double { latencies.isEmpty ? 0 : latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))] }
        return Target(opsPerSec: Double(i) / elapsed, batchesPerSec: Double(done) / elapsed, p50Millis: pct(0.5), p99Millis: pct(0.99))
    }

    /// Each figure's median over the rounds.
    static func medianTarget(_ targets: [Target]) -> Target {
        Target(opsPerSec: median(targets.map(\.opsPerSec)), batchesPerSec: median(targets.map(\.batchesPerSec)),
               p50Millis: median(targets.map(\.p50Millis)), p99Millis: median(targets.map(\.p99Millis)))
    }

    /// A bridge from a source root written 200 times a second into the three members; the
    /// member it writes to is SIGKILLed `failovers` times (restarted on its data and socket
    /// after each): the time
    /// until its checkpoint, read from another member, passes where it stood at the kill
    /// by more than one batch.
    func failovers(members: [DaemonProcess], etcd: EtcdCluster, dir: URL) async throws -> [Double] {
        guard failovers > 0 else { return [] }
        var members = members
        let addresses = members.indices.map { "unix:\(socket($0, dir: dir))" }
        let source = try startDaemon(binDir, dir.path, "qsnode", ["--role", "root", "--data", dir.appendingPathComponent("source").path,
                                                                   "--listen", "127.0.0.1:0", "--log-level", "warning"])
        defer { _ = try? source.stop() }
        let sc = try await QSClient.connect(host: "127.0.0.1", port: try source.port("write"))
        let stop = StopFlag()
        let writer = Task {
            var i = 0
            while !stop.isSet {
                _ = try? await sc.write([.set(key: Array("f\(i % 1000)".utf8), value: Array("v\(i)".utf8), expiry: nil)], sourceID: "writer")
                i += 1
                try? await Task.sleep(for: .milliseconds(5))
            }
        }
        let bridge = try startDaemon(binDir, dir.path, "qsqsbridge", ["--source", "qs://127.0.0.1:\(try source.port("write"))",
                                                                       "--root", addresses.joined(separator: ","), "--mode", "batched",
                                                                       "--source-id", "failover", "--batch-max-ops", "5", "--batch-interval", "20ms",
                                                                       "--admin", "127.0.0.1:0", "--log-level", "warning"])
        defer {
            stop.set()
            _ = try? bridge.stop()
        }
        let admin = try bridge.port("admin")
        var times = [Double]()
        for _ in 0..<failovers {
            guard let inUse = addresses.firstIndex(where: { metricValue(port: admin, "qs_bridge_root_in_use{address=\"\($0)\"}") == 1 }) else {
                throw BenchError("cluster bench: the bridge writes to none of the members")
            }
            let other = (inUse + 1) % members.count
            let oc = try await QSClient.connect(unixPath: socket(other, dir: dir))
            _ = await Harness.eventually(timeout: .seconds(30)) { ((try? await oc.checkpoint(sourceID: "failover")) ?? nil ?? 0) > 0 }
            _ = try members[inUse].stop(signal: SIGKILL)
            let killed = ContinuousClock.now
            let atKill = (try await oc.checkpoint(sourceID: "failover")) ?? 0
            let moved = await Harness.eventually(timeout: .seconds(30), pollEvery: .milliseconds(5)) {
                ((try? await oc.checkpoint(sourceID: "failover")) ?? nil ?? 0) > atKill + 5
            }
            guard moved else { throw BenchError("cluster bench: the bridge did not move on within 30 s of its member's SIGKILL") }
            times.append((ContinuousClock.now - killed).seconds * 1000)
            await oc.close()
            FileHandle.standardError.write(Data(String(format: "cluster: bridge failover %.0f ms\n", times.last ?? 0).utf8))
            members[inUse] = try startMember(inUse, etcd: etcd, dir: dir)
        }
        stop.set()
        _ = await writer.value
        await sc.close()
        for m in members { _ = try? m.stop() }
        return times
    }
}
