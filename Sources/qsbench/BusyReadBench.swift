import Foundation
import QSClient
import QSModel
import QSStore
import QSTesting

/// The `reads-busy` suite: memcached `get` at 8 connections on a replica while it is busy,
/// each as a ratio to the same replica idle in the same run (median of `rounds` loads):
/// - applying: a writer sends the root `rate` updates/s (overwrites of the read keys), which
///   the replica follows;
/// - snapshot: the replica serves one snapshot after another to empty replicas bootstrapping
///   from it;
/// - trimming: a replica that caught up through a long log trims it down to a short
///   `--log-retention` (entries trimmed during the loads are reported).
struct BusyReadBench {
    let keys: Int
    let rate: Int
    let rounds: Int
    let seconds: Double
    let valueBytes: Int
    let scratch: String
    let binDir: URL
    /// The replicas' read flags (`ReadBench.readFlags`).
    var readFlags: [String] = []

    struct Phase: Codable {
        var name: String
        /// memcached get/s at 8 connections, one per round.
        var rounds: [Double]
        var opsPerSec: Double
        var p99Micros: Double
        /// opsPerSec / the idle phase's.
        var ratio: Double
        /// applying: updates/s the replica applied; snapshot: snapshots served; trimming: entries trimmed/s.
        var work: Double
        var workUnit: String
    }

    struct Result: Codable {
        var keys: Int
        var targetUpdatesPerSec: Int
        var phases: [Phase]
        var replicaPeakRSSBytes: Int
        var replicaPeakAnonBytes: Int
    }

    func key(_ i: Int) -> String { benchKey(i) }

    func run() async throws -> Result {
        let rootDir = scratch + "/busy-root", behindDir = scratch + "/busy-behind"
        let value = [UInt8](repeating: 0x76, count: valueBytes)
        let logEntries = 100_000
        // A root holding the keys, whose first entry a copy has (for the trimming replica),
        // then a long log of small entries.
        do {
            let store = try await Store.open(directory: rootDir, mapSize: 16 << 30, noSync: true)
            _ = try await store.applyBatch(sourceID: "load", expected: 0, new: 1, operations: [.set(key: Array(key(0).utf8), value: value, expiry: nil)])
            try await store.sync()
            try FileManager.default.createDirectory(atPath: behindDir, withIntermediateDirectories: true)
            let copy = open(behindDir + "/data.mdb", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            defer { close(copy) }
            try await store.copy(toFileDescriptor: copy, compact: false)
            let per = max(1, keys / logEntries)
            for i in 1..<logEntries {
                let ops: [Mutation] = (0..<per).map { .set(key: Array(key((i * per + $0) % keys).utf8), value: value, expiry: nil) }
                _ = try await store.applyBatch(sourceID: "load", expected: UInt64(i), new: UInt64(i + 1), operations: ops)
            }
            try await store.sync()
        }
        let reads = ReadBench(keys: keys, catchUpEntries: 0, valueBytes: valueBytes, seconds: seconds, scratch: scratch, binDir: binDir,
                              readFlags: readFlags)
        let root = try startDaemon(binDir, scratch, "qsnode", ["--data", rootDir, "--listen", "127.0.0.1:0", "--log-level", "warning"])
        defer { _ = try? root.stop() }
        let rootPort = try root.port("write")
        let head = try await Store.open(directory: rootDir, readOnly: true).head()
        FileHandle.standardError.write(Data("reads-busy: replica bootstrapping\n".utf8))
        let (replica, _) = try await reads.replica(scratch + "/busy-replica", upstream: rootPort, until: head,
                                                   extra: ["--memcached", "127.0.0.1:0", "--memcached-flags-in-value", "false"])
        defer { _ = try? replica.stop() }
        let requests = Requests((0..<keys).map { Array("get \(key($0))\r\n".utf8) })
        let mcPort = try replica.port("memcached"), replicaPort = try replica.port("write")
        var rss = 0, anon = 0
        func measure(_ name: String, port: Int, work: () async throws -> (Double, String)) async throws -> Phase {
            FileHandle.standardError.write(Data("reads-busy: \(name)\n".utf8))
            var rates = [Double](), p99s = [Double]()
            for _ in 0..<rounds {
                let l = reads.load(port: port, connections: 8, requests: requests, done: isMemcachedDone)
                rates.append(l.opsPerSec)
                p99s.append(l.p99Micros)
                rss = max(rss, peakRSS(pid: replica.pid))
                anon = max(anon, anonRSS(pid: replica.pid))
            }
            let (w, unit) = try await work()
            return Phase(name: name, rounds: rates, opsPerSec: median(rates), p99Micros: median(p99s), ratio: 0, work: w, workUnit: unit)
        }
        var phases = [Phase]()
        phases.append(try await measure("idle", port: mcPort) { (0, "") })

        // Applying: a writer paced at `rate` overwrites (a new value each round, never identical).
        let writer = PacedWriter(port: rootPort, rate: rate, keys: keys, valueBytes: valueBytes)
        let client = try await QSClient.connect(host: "127.0.0.1", port: replicaPort)
        let before = try await client.head()
        let started = ContinuousClock.now
        writer.start()
        let applying = try await measure("applying", port: mcPort) {
            let h = try await client.head()
            return (Double(h.index - before.index) * Double(writer.perBatch) / (ContinuousClock.now - started).seconds, "updates/s applied by the replica")
        }
        try await writer.stop()
        await client.close()
        if let failure = writer.failure { throw BenchError("reads-busy: the writer failed: \(failure)") }
        phases.append(applying)
        // Snapshot: empty replicas bootstrap from this one, one after another.
        let feeder = SnapshotLoop(binDir: binDir, scratch: scratch, upstream: replicaPort)
        feeder.start()
        phases.append(try await measure("snapshot", port: mcPort) { (Double(await feeder.stop()), "snapshots served") })
        // The root took the applying phase's writes since `head`: the trimming replica
        // catches up to where the root stands now.
        let rootClient = try await QSClient.connect(host: "127.0.0.1", port: rootPort)
        let current = try await rootClient.head()
        await rootClient.close()
        phases.append(try await trimming(rootPort: rootPort, head: current, behindDir: behindDir, reads: reads, requests: requests))
        let idle = phases[0].opsPerSec
        for i in phases.indices { phases[i].ratio = phases[i].opsPerSec / max(idle, 1) }
        return Result(keys: keys, targetUpdatesPerSec: rate, phases: phases, replicaPeakRSSBytes: rss, replicaPeakAnonBytes: anon)
    }

    /// A replica one entry in catches up through the root's long log, keeping only 100
    /// entries: its trimmer works through the rest while the reads run.
    func trimming(rootPort: Int, head: Head, behindDir: String, reads: ReadBench, requests: Requests) async throws -> Phase {
        FileHandle.standardError.write(Data("reads-busy: trimming replica catching up\n".utf8))
        let (trimmer, _) = try await reads.replica(behindDir, upstream: rootPort, until: head,
                                                   extra: ["--memcached", "127.0.0.1:0", "--memcached-flags-in-value", "false",
                                                           "--log-retention", "100"])
        defer { _ = try? trimmer.stop() }
        let client = try await QSClient.connect(host: "127.0.0.1", port: try trimmer.port("write"))
        defer { Task { await client.close() } }
        func firstIndex() async throws -> UInt64 {
            let json = try await client.status()
            guard let object = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any],
                  let first = (object["log_first_index"] as? NSNumber)?.uint64Value else { throw BenchError("no log_first_index in the status: \(json)") }
            return first
        }
        let port = try trimmer.port("memcached")
        // The trimmer's first pass runs at start (nothing to trim yet), the next within 5 s.
        let moving = await Harness.eventually(timeout: .seconds(30), pollEvery: .milliseconds(20)) { ((try? await firstIndex()) ?? 0) > 1 }
        guard moving else { throw BenchError("reads-busy: the replica with --log-retention 100 did not start trimming; log:\n\(trimmer.log)") }
        let from = try await firstIndex()
        let start = ContinuousClock.now
        var rates = [Double](), p99s = [Double]()
        for _ in 0..<rounds {
            let l = reads.load(port: port, connections: 8, requests: requests, done: isMemcachedDone)
            rates.append(l.opsPerSec)
            p99s.append(l.p99Micros)
        }
        let to = try await firstIndex()
        return Phase(name: "trimming", rounds: rates, opsPerSec: median(rates), p99Micros: median(p99s), ratio: 0,
                     work: Double(to - from) / (ContinuousClock.now - start).seconds, workUnit: "entries trimmed/s during the loads")
    }
}

/// Sends the root `rate` updates/s in batches of `perBatch` (one every `perBatch / rate`
/// seconds, paced against the clock), overwriting the read keys with a value that changes
/// every batch.
final class PacedWriter: @unchecked Sendable {
    let port: Int, rate: Int, keys: Int, valueBytes: Int
    let perBatch = 500
    private let stopFlag = StopFlag()
    private var task: Task<Void, Never>?
    private let lock = NSLock()
    private var error: String?

    init(port: Int, rate: Int, keys: Int, valueBytes: Int) {
        self.port = port
        self.rate = rate
        self.keys = keys
        self.valueBytes = valueBytes
    }

    var failure: String? { lock.withLock { error } }

    func start() {
        task = Task { [self] in
            do {
                let client = try await QSClient.connect(host: "127.0.0.1", port: port)
                defer { Task { await client.close() } }
                let began = ContinuousClock.now
                var n = 0
                while !stopFlag.isSet {
                    let due = Int((ContinuousClock.now - began).seconds * Double(rate))
                    if n >= due {
                        try await Task.sleep(for: .milliseconds(2))
                        continue
                    }
                    let batch = n / perBatch
                    var v = [UInt8](repeating: 0x61, count: valueBytes)
                    withUnsafeBytes(of: UInt64(batch)) { b in for (i, x) in b.enumerated() where i < v.count { v[i] = x } }
                    let ops: [Mutation] = (0..<perBatch).map { j in
                        .set(key: Array(benchKey((n + j) % keys).utf8), value: v, expiry: nil)
                    }
                    let r = try await client.batch(sourceID: "busy", expected: UInt64(batch), new: UInt64(batch + 1), operations: ops)
                    guard case .applied = r else { throw BenchError("unexpected response \(r)") }
                    n += perBatch
                }
            } catch {
                lock.withLock { self.error = "\(error)" }
            }
        }
    }

    func stop() async throws {
        stopFlag.set()
        await task?.value
    }
}

/// Empty replicas bootstrapping from `upstream` one after another until stopped.
final class SnapshotLoop: @unchecked Sendable {
    let binDir: URL, scratch: String, upstream: Int
    private let stopFlag = StopFlag()
    private var task: Task<Int, Never>?

    init(binDir: URL, scratch: String, upstream: Int) {
        self.binDir = binDir
        self.scratch = scratch
        self.upstream = upstream
    }

    func start() {
        task = Task { [self] in
            var served = 0
            while !stopFlag.isSet {
                let dir = "\(scratch)/busy-snap-\(served)"
                guard let p = try? startDaemon(binDir, scratch, "qsnode", ["--role", "replica", "--data", dir, "--listen", "127.0.0.1:0",
                                                                          "--upstream", "127.0.0.1:\(upstream)", "--log-level", "warning"],
                                               timeout: .seconds(120)),
                      let port = try? p.port("write"), let client = try? await QSClient.connect(host: "127.0.0.1", port: port) else { break }
                _ = await Harness.eventually(timeout: .seconds(120), pollEvery: .milliseconds(20)) { ((try? await client.head())?.index ?? 0) > 0 }
                await client.close()
                _ = try? p.stop()
                try? FileManager.default.removeItem(atPath: dir)
                served += 1
            }
            return served
        }
    }

    /// Stops after the bootstrap under way; returns how many completed.
    func stop() async -> Int {
        stopFlag.set()
        return await task?.value ?? 0
    }
}
