import ArgumentParser
import Foundation
import QSClient
import QSDaemon
import QSNet
import QSModel
import QSStore
import QSTesting

/// `make bench`: how fast a root applies batches over the real protocol, against a plain
/// LMDB write loop measured in the same run.
@main
struct QSBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qsbench",
        abstract: "Benchmark the root write path against a plain LMDB write loop in the same run.",
        discussion: "Prints a table and writes JSON under --out. Figures are ratios against the reference, with peak RSS.",
        version: QSVersion.string
    )

    static func main() async { await runCommand() }

    @Option(help: ArgumentHelp("Batch sizes (sets per batch), comma separated. (env: QS_BENCH_BATCH_SIZES)", valueName: "list"))
    var batchSizes: String = QSEnv.string("QS_BENCH_BATCH_SIZES") ?? "1,100,5000"

    @Option(help: ArgumentHelp("Time spent on each measurement, e.g. 3s. (env: QS_BENCH_DURATION)", valueName: "duration"))
    var duration: Interval = QSEnv.value("QS_BENCH_DURATION", Interval(.seconds(3)), flag: "--duration")

    @Option(help: ArgumentHelp("Bytes per value. (env: QS_BENCH_VALUE_BYTES)", valueName: "n"))
    var valueBytes: Int = QSEnv.value("QS_BENCH_VALUE_BYTES", 100, flag: "--value-bytes")

    @Option(help: ArgumentHelp("Directory for the JSON results. (env: QS_BENCH_OUT)", valueName: "dir"))
    var out: String = QSEnv.string("QS_BENCH_OUT") ?? "bench/results"

    @Option(help: ArgumentHelp("Benchmarks to run: root-write, mirror, lag, backlog, reads, rest, engines (comma separated). (env: QS_BENCH_SUITES)", valueName: "list"))
    var suites: String = QSEnv.string("QS_BENCH_SUITES") ?? "root-write,mirror,lag,backlog,reads,rest,engines"

    @Option(help: ArgumentHelp("Records the engines suite writes at batches of 100 and 5,000 (batches of 1 write at most 2,000). (env: QS_BENCH_ENGINE_RECORDS)", valueName: "n"))
    var engineRecords: Int = QSEnv.value("QS_BENCH_ENGINE_RECORDS", 100_000, flag: "--engine-records")

    @Option(help: ArgumentHelp("Entries in the mirror benchmark's source root. (env: QS_BENCH_MIRROR_ENTRIES)", valueName: "n"))
    var mirrorEntries: Int = QSEnv.value("QS_BENCH_MIRROR_ENTRIES", 1_000_000, flag: "--mirror-entries")

    @Option(help: ArgumentHelp("The rest suite's reference: a real ktserver listening on 127.0.0.1:PORT, measured instead of fakekt (its database must take set). (env: QS_BENCH_REST_KT_PORT)", valueName: "port"))
    var restKTPort: Int = QSEnv.value("QS_BENCH_REST_KT_PORT", 0, flag: "--rest-kt-port")

    @Option(help: ArgumentHelp("Scratch directory for the stores (a real disk, not tmpfs, for honest fsyncs). (env: QS_BENCH_SCRATCH)", valueName: "dir"))
    var scratch: String = QSEnv.string("QS_BENCH_SCRATCH") ?? ".bench-scratch"

    struct Row: Codable {
        var batchSize: Int
        var nodeOpsPerSec: Double
        var lmdbOpsPerSec: Double
        var ratio: Double
        var nodeDiskBytesPerPayloadByte: Double
        var lmdbDiskBytesPerPayloadByte: Double
        var nodeBatches: Int
        var lmdbBatches: Int
        var nodePeakRSSBytes: Int
    }

    struct Report: Codable {
        var benchmark = "root-write"
        var recordedAt: String
        var valueBytes: Int
        var secondsPerMeasurement: Double
        var rows: [Row]
        var benchProcessPeakRSSBytes: Int
        var note = "ratio = node ops/s over the real protocol (one durable LMDB transaction per batch, plus log entry and checkpoint) / plain LMDB loop ops/s (one durable transaction per batch, sets only)"
    }

    func run() async throws {
        let sizes = batchSizes.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !sizes.isEmpty, sizes.allSatisfy({ $0 > 0 }) else { throw ValidationError("--batch-sizes needs positive integers, e.g. 1,100,5000") }
        let d = duration.duration
        try? FileManager.default.removeItem(atPath: scratch)
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let runSuites = Set(suites.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
        if runSuites.contains("mirror") {
            let bin = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
            let m = try await MirrorBench(entries: mirrorEntries, keys: min(mirrorEntries, 100_000), valueBytes: valueBytes,
                                          scratch: scratch, binDir: bin).run()
            print(String(format: "mirror: qsqsbridge --mode compatible carried %d entries at %.0f entries/s; the target store applies them itself at %.0f entries/s (ratio %.3f); bridge peak RSS %.1f MB (own memory %.1f MB), target %.1f MB with LMDB's mapped pages (own memory %.1f MB); verify %.0f keys/s",
                         m.entries, m.bridgeEntriesPerSec, m.localApplyEntriesPerSec, m.ratio, Double(m.bridgePeakRSSBytes) / 1e6,
                         Double(m.bridgePeakAnonBytes) / 1e6, Double(m.targetPeakRSSBytes) / 1e6, Double(m.targetPeakAnonBytes) / 1e6,
                         m.verifyKeysPerSec))
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            try writeResult(m, "mirror")
        }
        if runSuites.contains("lag") {
            let bin = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let l = try await LagBench(seconds: 20, writesPerSecond: 10_000, scratch: scratch, binDir: bin, out: out).run()
            print(String(format: "lag: KT write → applied on the root, target %d updates/s (%d written in %.0f s): p50 %.2f s, p99 %.2f s, max %.2f s (%d samples of qs_bridge_lag_seconds), bridge peak RSS %.1f MB; chart %@",
                         l.writesPerSecond, l.updatesWritten, l.seconds, l.p50LagSeconds, l.p99LagSeconds, l.maxLagSeconds, l.samples,
                         Double(l.bridgePeakRSSBytes) / 1e6, l.chart))
            try writeResult(l, "lag")
        }
        if runSuites.contains("backlog") {
            let bin = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let b = try await BacklogBench(updates: mirrorEntries, keys: min(mirrorEntries, 100_000), valueBytes: valueBytes,
                                           scratch: scratch, binDir: bin).run()
            print(String(format: "backlog: qsktbridge replayed %d KT updates (%.0f MB capture) at %.0f updates/s; the store applies the same sets itself at %.0f/s (ratio %.3f); bridge peak RSS %.1f MB (own memory %.1f MB)",
                         b.updates, Double(b.captureBytes) / 1e6, b.bridgeUpdatesPerSec, b.localApplyUpdatesPerSec, b.ratio,
                         Double(b.bridgePeakRSSBytes) / 1e6, Double(b.bridgePeakAnonBytes) / 1e6))
            try writeResult(b, "backlog")
        }
        if runSuites.contains("reads") {
            let bin = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let r = try await ReadBench(keys: 100_000, catchUpEntries: min(mirrorEntries, 200_000), valueBytes: valueBytes, seconds: 3,
                                        scratch: scratch, binDir: bin).run()
            print("reads on a replica (\(r.keys) keys of \(valueBytes) B) next to a real memcached, same run:")
            for (i, q) in r.memcachedReplica.enumerated() {
                let m = r.memcachedReal[i], k = r.ktHTTPReplica[i]
                print(String(format: "  %d conn: memcached get %.0f/s (p50 %.0f µs, p99 %.0f µs) vs real memcached %.0f/s (p50 %.0f, p99 %.0f): ratio %.2f; KT HTTP GET %.0f/s (p50 %.0f, p99 %.0f): ratio %.2f",
                             q.connections, q.opsPerSec, q.p50Micros, q.p99Micros, m.opsPerSec, m.p50Micros, m.p99Micros, q.opsPerSec / max(m.opsPerSec, 1),
                             k.opsPerSec, k.p50Micros, k.p99Micros, k.opsPerSec / max(m.opsPerSec, 1)))
                let g = r.ktRPCGetReplica[i], mq = r.memcachedMultiReplica[i], mr = r.memcachedMultiReal[i]
                print(String(format: "          KT /rpc/get %.0f/s (p50 %.0f, p99 %.0f): ratio %.2f; memcached 10-key get %.0f/s (p50 %.0f, p99 %.0f) vs real %.0f/s (p50 %.0f, p99 %.0f): ratio %.2f",
                             g.opsPerSec, g.p50Micros, g.p99Micros, g.opsPerSec / max(m.opsPerSec, 1),
                             mq.opsPerSec, mq.p50Micros, mq.p99Micros, mr.opsPerSec, mr.p50Micros, mr.p99Micros, mq.opsPerSec / max(mr.opsPerSec, 1)))
            }
            print(String(format: "  catch-up %.0f entries/s; bootstrap %.1f MB/s vs a plain file copy %.1f MB/s (%.1f MB environment); replica own memory %.1f MB",
                         r.catchUpEntriesPerSec, r.bootstrapMBPerSec, r.fileCopyMBPerSec, Double(r.environmentBytes) / 1e6, Double(r.replicaPeakAnonBytes) / 1e6))
            try writeResult(r, "reads")
        }
        if runSuites.contains("engines") {
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let e = try await EnginesBench(records: engineRecords, scratch: scratch).run()
            print("engines: \(e.records) configuration-shaped records through the store (keys zone:NNNN/rule:NNNNNN, values 20 B to 10 KB, a tenth expiring)")
            print("  engine          disk/payload   written/payload at batch 1    100   5000   load s (batch 5000)")
            for r in e.engines {
                print("  " + r.name.padding(toLength: 14, withPad: " ", startingAt: 0) + String(format: " %12.2f %27.2f %6.2f %6.2f %8.2f", r.diskPerPayload, r.writeAmplification["1"] ?? 0,
                             r.writeAmplification["100"] ?? 0, r.writeAmplification["5000"] ?? 0, r.loadSeconds))
            }
            try writeResult(e, "engines")
        }
        if runSuites.contains("rest") {
            let bin = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let r = try await RestBench(valueBytes: valueBytes, seconds: max(d.seconds, 5), scratch: scratch, binDir: bin,
                                      ktPort: restKTPort > 0 ? restKTPort : nil).run()
            print("rest: producers' /rpc/set through qsrest (acknowledged once committed at a root) next to \(r.reference)'s, same run:")
            for (i, n) in r.producers.enumerated() {
                let k = r.kt[i], slow = r.qsrest500ms[i], fast = r.qsrest20ms[i]
                print(String(format: "  %2d producers: KT %.0f writes/s (p99 %.1f ms); qsrest 500ms %.0f/s (p99 %.0f ms): ratio %.3f; qsrest 20ms %.0f/s (p99 %.1f ms): ratio %.3f",
                             n, k.opsPerSec, k.p99Micros / 1000, slow.opsPerSec, slow.p99Micros / 1000, slow.opsPerSec / max(k.opsPerSec, 1),
                             fast.opsPerSec, fast.p99Micros / 1000, fast.opsPerSec / max(k.opsPerSec, 1)))
            }
            print(String(format: "  qsrest own memory %.1f MB", Double(r.qsrestPeakAnonBytes) / 1e6))
            try writeResult(r, "rest")
        }
        guard runSuites.contains("root-write") else { return }
        var rows = [Row]()
        for size in sizes {
            let lmdb = try runLMDB(batchSize: size, duration: d, dir: "\(scratch)/lmdb-\(size)")
            let node = try await runNode(batchSize: size, duration: d, dir: "\(scratch)/node-\(size)")
            rows.append(Row(batchSize: size, nodeOpsPerSec: node.opsPerSec, lmdbOpsPerSec: lmdb.opsPerSec,
                            ratio: node.opsPerSec / lmdb.opsPerSec,
                            nodeDiskBytesPerPayloadByte: node.diskPerPayload, lmdbDiskBytesPerPayloadByte: lmdb.diskPerPayload,
                            nodeBatches: node.batches, lmdbBatches: lmdb.batches, nodePeakRSSBytes: node.peakRSS))
        }
        let report = Report(recordedAt: ISO8601DateFormatter().string(from: Date()), valueBytes: valueBytes,
                            secondsPerMeasurement: d.seconds, rows: rows, benchProcessPeakRSSBytes: peakRSS(pid: nil))
        printTable(report)
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        let json = try encoder.encode(report)
        let stamp = report.recordedAt.replacingOccurrences(of: ":", with: "")
        try json.write(to: URL(fileURLWithPath: "\(out)/root-write-\(stamp).json"))
        try json.write(to: URL(fileURLWithPath: "\(out)/root-write-latest.json"))
        print("results: \(out)/root-write-\(stamp).json")
    }

    struct Measurement {
        var opsPerSec: Double
        var diskPerPayload: Double
        var batches: Int
        var peakRSS: Int
    }

    func key(_ i: Int) -> [UInt8] { Array(String(format: "bench/%010d", i).utf8) }

    func value(_ i: Int) -> [UInt8] {
        var v = [UInt8](repeating: 0, count: valueBytes)
        var x = UInt64(i) &* 0x9E37_79B9_7F4A_7C15
        for j in v.indices {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17
            v[j] = UInt8(truncatingIfNeeded: x)
        }
        return v
    }

    /// The reference: one durable LMDB transaction per batch of puts, in this process.
    func runLMDB(batchSize: Int, duration: Duration, dir: String) throws -> Measurement {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let env = try LMDBEnvironment(path: dir, options: .init(mapSize: 8 << 30))
        let db = try env.openDatabase("kv")
        let ioBefore = writeBytes(pid: nil)
        let start = ContinuousClock.now
        var i = 0, batches = 0, payload = 0
        while ContinuousClock.now - start < duration {
            try env.write { txn in
                for _ in 0..<batchSize {
                    let k = key(i), v = value(i)
                    try txn.put(db, k, v)
                    payload += k.count + v.count
                    i += 1
                }
            }
            batches += 1
        }
        let elapsed = (ContinuousClock.now - start).seconds
        let written = writeBytes(pid: nil) - ioBefore
        return Measurement(opsPerSec: Double(i) / elapsed, diskPerPayload: Double(written) / Double(payload), batches: batches, peakRSS: 0)
    }

    /// The node: a real `qsnode` process, batches over the write protocol on loopback.
    func runNode(batchSize: Int, duration: Duration, dir: String) async throws -> Measurement {
        let bin = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        let node = try startDaemon(bin, scratch, "qsnode", ["--data", dir, "--listen", "127.0.0.1:0", "--log-level", "warning"])
        defer { _ = try? node.stop() }
        let client = try await QSClient.connect(host: "127.0.0.1", port: try node.port("write"))
        let ioBefore = writeBytes(pid: node.pid)
        let start = ContinuousClock.now
        var i = 0, batches = 0, payload = 0
        while ContinuousClock.now - start < duration {
            var ops = [Mutation]()
            ops.reserveCapacity(batchSize)
            for _ in 0..<batchSize {
                let k = key(i), v = value(i)
                ops.append(.set(key: k, value: v, expiry: nil))
                payload += k.count + v.count
                i += 1
            }
            let r = try await client.batch(sourceID: "bench", expected: UInt64(batches), new: UInt64(batches + 1), operations: ops)
            guard case .applied = r else { throw ValidationError("unexpected response \(r)") }
            batches += 1
        }
        let elapsed = (ContinuousClock.now - start).seconds
        let written = writeBytes(pid: node.pid) - ioBefore
        let rss = peakRSS(pid: node.pid)
        await client.close()
        return Measurement(opsPerSec: Double(i) / elapsed, diskPerPayload: Double(written) / Double(payload), batches: batches, peakRSS: rss)
    }

    /// Writes a suite's result as `<out>/<suite>-latest.json` (snake-case keys, sorted).
    func writeResult(_ value: some Encodable, _ suite: String) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        enc.keyEncodingStrategy = .convertToSnakeCase
        try enc.encode(value).write(to: URL(fileURLWithPath: "\(out)/\(suite)-latest.json"))
    }

    func printTable(_ r: Report) {
        print("root write path vs plain LMDB (\(r.valueBytes)-byte values, \(r.secondsPerMeasurement)s each)")
        func pad(_ s: String, _ w: Int) -> String { String(repeating: " ", count: max(0, w - s.count)) + s }
        print([pad("batch", 8), pad("node ops/s", 14), pad("lmdb ops/s", 14), pad("ratio", 8), pad("node disk/B", 12),
               pad("lmdb disk/B", 12), pad("node RSS", 10)].joined(separator: " "))
        for row in r.rows {
            print(String(format: "%8d %14.0f %14.0f %8.3f %12.2f %12.2f %8.1fMB", row.batchSize, row.nodeOpsPerSec, row.lmdbOpsPerSec,
                         row.ratio, row.nodeDiskBytesPerPayloadByte, row.lmdbDiskBytesPerPayloadByte, Double(row.nodePeakRSSBytes) / 1e6))
        }
        print(String(format: "bench process peak RSS: %.1fMB", Double(r.benchProcessPeakRSSBytes) / 1e6))
    }
}

/// `write_bytes` of /proc/PID/io (bytes the process caused to be sent to storage).
func writeBytes(pid: Int32?) -> Int {
    let path = pid.map { "/proc/\($0)/io" } ?? "/proc/self/io"
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return 0 }
    for line in text.split(separator: "\n") where line.hasPrefix("write_bytes:") {
        return Int(line.split(separator: " ").last ?? "") ?? 0
    }
    return 0
}

/// Anonymous resident memory (RssAnon: the process's own heap and stacks, not LMDB's
/// file-backed map) in bytes.
func anonRSS(pid: Int32?) -> Int { ProcessMemory.statusBytes("RssAnon", pid: pid) ?? 0 }

/// Peak resident set size (VmHWM) in bytes, LMDB's mapped pages included.
func peakRSS(pid: Int32?) -> Int { ProcessMemory.statusBytes("VmHWM", pid: pid) ?? 0 }
