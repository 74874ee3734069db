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
        abstract: "The project's benchmarks (--suites), each against a reference measured in the same run.",
        discussion: "Prints a table per suite and writes JSON under --out. Figures are ratios against the reference (a plain LMDB loop, a real memcached, a file copy, KT or fakekt, the store itself), with peak RSS and own memory. docs/benchmarks.md says what each suite measures.",
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

    @Option(help: ArgumentHelp("Benchmarks to run: root-write (alias writes), mirror, lag, backlog, reads, reads-busy, propagation, rest, engines, bootstrap, cluster, read-loop, fill, scale (comma separated; cluster, read-loop, fill and scale are not in the default list). (env: QS_BENCH_SUITES)", valueName: "list"))
    var suites: String = QSEnv.string("QS_BENCH_SUITES") ?? "root-write,mirror,lag,backlog,reads,reads-busy,propagation,rest,engines,bootstrap"

    @Option(help: ArgumentHelp("Root environment sizes in MB the bootstrap suite measures, comma separated; the first also runs replicas at once against in turn (e.g. 100,500,1000 for the full figures). (env: QS_BENCH_BOOTSTRAP_SIZES)", valueName: "list"))
    var bootstrapSizes: String = QSEnv.string("QS_BENCH_BOOTSTRAP_SIZES") ?? "100"

    @Option(help: ArgumentHelp("Replicas the bootstrap suite starts at once, then one after another (0 or 1: skip). (env: QS_BENCH_BOOTSTRAP_REPLICAS)", valueName: "n"))
    var bootstrapReplicas: Int = QSEnv.value("QS_BENCH_BOOTSTRAP_REPLICAS", 4, flag: "--bootstrap-replicas")

    @Option(help: ArgumentHelp("Records the engines suite writes at batches of 100 and 5,000 (batches of 1 write at most 2,000). (env: QS_BENCH_ENGINE_RECORDS)", valueName: "n"))
    var engineRecords: Int = QSEnv.value("QS_BENCH_ENGINE_RECORDS", 100_000, flag: "--engine-records")

    @Option(help: ArgumentHelp("Updates the engines suite sends a root of each engine while it reads the CPU seconds of the root and of a replica applying them. (env: QS_BENCH_ENGINE_UPDATES)", valueName: "n"))
    var engineUpdates: Int = QSEnv.value("QS_BENCH_ENGINE_UPDATES", 100_000, flag: "--engine-updates")

    @Option(help: ArgumentHelp("Entries in the mirror benchmark's source root. (env: QS_BENCH_MIRROR_ENTRIES)", valueName: "n"))
    var mirrorEntries: Int = QSEnv.value("QS_BENCH_MIRROR_ENTRIES", 1_000_000, flag: "--mirror-entries")

    @Option(help: ArgumentHelp("The rest suite's reference: a real ktserver listening on 127.0.0.1:PORT, measured instead of fakekt (its database must take set). (env: QS_BENCH_REST_KT_PORT)", valueName: "port"))
    var restKTPort: Int = QSEnv.value("QS_BENCH_REST_KT_PORT", 0, flag: "--rest-kt-port")

    @Option(help: ArgumentHelp("Scratch directory for the stores (a real disk, not tmpfs, for honest fsyncs). (env: QS_BENCH_SCRATCH)", valueName: "dir"))
    var scratch: String = QSEnv.string("QS_BENCH_SCRATCH") ?? ".bench-scratch"

    @Option(help: ArgumentHelp("Rounds of each measurement in writes (node and plain LMDB alternating, fresh stores each round), backlog (the store itself and the bridge alternating, fresh stores each round), reads and reads-busy (loads taking turns); the median round is reported with every round in the JSON. (env: QS_BENCH_ROUNDS)", valueName: "n"))
    var rounds: Int = QSEnv.value("QS_BENCH_ROUNDS", 5, flag: "--rounds")

    @Option(help: ArgumentHelp("Batches per write measurement instead of --duration (a fixed amount of work, for instruction counts under callgrind); 0 = run for --duration. (env: QS_BENCH_BATCHES)", valueName: "n"))
    var batches: Int = QSEnv.value("QS_BENCH_BATCHES", 0, flag: "--batches")

    @Option(help: ArgumentHelp("Batches the root-write client keeps in flight on its connection: 1 waits for each answer (the figures recorded so far), 2 is what qsktbridge keeps in flight by default (its --batches-in-flight), so the client's encoding and the node's decoding overlap the commit before. (env: QS_BENCH_WRITE_WINDOW)", valueName: "n"))
    var writeWindow: Int = QSEnv.value("QS_BENCH_WRITE_WINDOW", 1, flag: "--write-window")

    @Option(help: ArgumentHelp("Which keys root-write sets, one workload or both in turn (comma separated): new (keys neither store holds, in ascending order: the log's copy of each value is as large a share of the bytes as it can be) and overwrite (uniformly random keys of --write-keyspace keys both stores hold first, each a new value: an update workload's steady state). Unset (none): new,overwrite, or new alone against --write-target, which cannot be prefilled. overwrite needs --value-bytes of at least 8 (each set's value is made its own in its first 8 bytes). (env: QS_BENCH_WRITE_KEYS)", valueName: "list"))
    var writeKeys: OrNone<WriteKeysList> = QSEnv.value("QS_BENCH_WRITE_KEYS", .none, flag: "--write-keys")

    @Option(help: ArgumentHelp("Keys both stores hold before root-write measures --write-keys overwrite (written without fsync, synced once, before each round). (env: QS_BENCH_WRITE_KEYSPACE)", valueName: "n"))
    var writeKeyspace: Int = QSEnv.value("QS_BENCH_WRITE_KEYSPACE", 1_000_000, flag: "--write-keyspace")

    @Option(help: ArgumentHelp("Measure the root already listening at HOST:PORT (its write port) instead of starting one, e.g. a qsnode under valgrind; its disk bytes and memory are then not read. (env: QS_BENCH_WRITE_TARGET)", valueName: "host:port"))
    var writeTarget: String?

    @Option(help: ArgumentHelp("The fill suite: payload bytes written to the root at --write-target, then read back through --memcached-target, e.g. 1GiB. (env: QS_BENCH_FILL_BYTES)", valueName: "size"))
    var fillBytes: ByteSize = QSEnv.value("QS_BENCH_FILL_BYTES", ByteSize(1 << 30), flag: "--fill-bytes")

    @Option(help: ArgumentHelp("The fill suite: the memcached port (HOST:PORT, on loopback) of the root at --write-target, started with --memcached-flags-in-value false. (env: QS_BENCH_MEMCACHED_TARGET)", valueName: "host:port"))
    var memcachedTarget: String?

    @Option(help: ArgumentHelp("Lookups in the read-loop suite. (env: QS_BENCH_READS)", valueName: "n"))
    var reads: Int = QSEnv.value("QS_BENCH_READS", 1_000_000, flag: "--reads")

    @Option(help: ArgumentHelp("Key counts the scale suite measures reads, catch-up, bootstrap, root writes of new keys and root updates of the keys held at, comma separated. (env: QS_BENCH_SCALE_KEYS)", valueName: "list"))
    var scaleKeys: String = QSEnv.string("QS_BENCH_SCALE_KEYS") ?? "100000,1000000,5000000"

    @Option(help: ArgumentHelp("Updates/s the root takes while reads-busy measures the replica applying them. (env: QS_BENCH_BUSY_RATE)", valueName: "n"))
    var busyRate: Int = QSEnv.value("QS_BENCH_BUSY_RATE", 10_000, flag: "--busy-rate")

    @Option(help: ArgumentHelp("The replicas' --memcached-threads in reads, reads-busy and scale (0: memcached on the event loops); unset: the node's default. (env: QS_BENCH_MEMCACHED_THREADS)", valueName: "n"))
    var memcachedThreads: Int? = QSEnv.optional("QS_BENCH_MEMCACHED_THREADS", as: Int.self, flag: "--memcached-threads")

    @Option(help: ArgumentHelp("The replicas' --kt-http-threads in reads, reads-busy and scale (0: KT HTTP on the event loops); unset: the node's default. (env: QS_BENCH_KT_HTTP_THREADS)", valueName: "n"))
    var ktHttpThreads: Int? = QSEnv.optional("QS_BENCH_KT_HTTP_THREADS", as: Int.self, flag: "--kt-http-threads")

    @Option(help: ArgumentHelp("Seconds of each read load in reads and reads-busy (each load runs --rounds times; the median is reported). (env: QS_BENCH_LOAD_SECONDS)", valueName: "s"))
    var loadSeconds: Double = QSEnv.value("QS_BENCH_LOAD_SECONDS", 5.0, flag: "--load-seconds")

    @Option(help: ArgumentHelp("The bridge's --batch-interval values the propagation suite runs with, comma separated. (env: QS_BENCH_BATCH_INTERVALS)", valueName: "list"))
    var batchIntervals: String = QSEnv.string("QS_BENCH_BATCH_INTERVALS") ?? "500ms,50ms"

    @Option(help: ArgumentHelp("A real ktserver binary: the propagation suite runs each --batch-intervals value a second time with it as the KT (started on a free loopback port with its own update log), besides fakekt. Its shared libraries must be found (LD_LIBRARY_PATH). (env: QS_BENCH_PROPAGATION_KTSERVER)", valueName: "path"))
    var propagationKtserver: String = QSEnv.string("QS_BENCH_PROPAGATION_KTSERVER") ?? ""

    func run() async throws {
        let sizes = batchSizes.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !sizes.isEmpty, sizes.allSatisfy({ $0 > 0 }) else { throw ValidationError("--batch-sizes needs positive integers, e.g. 1,100,5000") }
        let runSuites = Set(suites.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
        // root-write runs last: its settings are checked before any suite starts.
        let target = writeTarget ?? QSEnv.string("QS_BENCH_WRITE_TARGET")
        let workloads = writeKeys.value?.workloads ?? (target == nil ? [.new, .overwrite] : [.new])
        let writes = runSuites.contains("root-write") || runSuites.contains("writes")
        guard (1...64).contains(writeWindow) else { throw ValidationError("--write-window must be 1 to 64, got \(writeWindow)") }
        if let t = memcachedThreads, !(0...128).contains(t) {
            throw ValidationError("--memcached-threads (or QS_BENCH_MEMCACHED_THREADS) must be 0 (the event loops) to 128, got \(t)")
        }
        if let t = ktHttpThreads, !(0...128).contains(t) {
            throw ValidationError("--kt-http-threads (or QS_BENCH_KT_HTTP_THREADS) must be 0 (the event loops) to 128, got \(t)")
        }
        let readFlags = (memcachedThreads.map { ["--memcached-threads", "\($0)"] } ?? []) + (ktHttpThreads.map { ["--kt-http-threads", "\($0)"] } ?? [])
        func on(_ threads: Int?) -> String { threads.map { $0 == 0 ? "on the event loops" : "on \($0) reader threads" } ?? "as the node's default serves it" }
        let servedOn = "memcached \(on(memcachedThreads)), KT HTTP \(on(ktHttpThreads))"
        if runSuites.contains("scale"), valueBytes < 8 {
            throw ValidationError("the scale suite measures root updates, whose values are made their own in their first 8 bytes: it needs --value-bytes of at least 8 (got \(valueBytes))")
        }
        if writes, workloads.contains(.overwrite) {
            guard writeKeyspace > 0 else { throw ValidationError("--write-keyspace must be positive, got \(writeKeyspace)") }
            guard target == nil else {
                throw ValidationError("--write-keys overwrite fills each round's stores before it measures, so it starts its own roots: drop --write-target (or measure --write-keys new against it)")
            }
            guard valueBytes >= 8 else {
                throw ValidationError("--write-keys overwrite makes each set's value its own in its first 8 bytes, so it needs --value-bytes of at least 8 (got \(valueBytes)); raise it or pass --write-keys new")
            }
        }
        let d = duration.duration
        try? FileManager.default.removeItem(atPath: scratch)
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        if runSuites.contains("mirror") {
            let bin = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
            let m = try await MirrorBench(entries: mirrorEntries, keys: min(mirrorEntries, 100_000), valueBytes: valueBytes,
                                          scratch: scratch, binDir: bin).run()
            print(String(format: "mirror: qsqsbridge --mode compatible carried %d entries at %.0f entries/s; the target store applies them itself at %.0f entries/s (ratio %.3f); bridge peak RSS %.1f MB (own memory %.1f MB), target %.1f MB with LMDB's mapped pages (own memory %.1f MB); verify %.0f keys/s",
                         m.entries, m.bridgeEntriesPerSec, m.localApplyEntriesPerSec, m.ratio, Double(m.bridgePeakRSSBytes) / 1e6,
                         Double(m.bridgePeakAnonBytes) / 1e6, Double(m.targetPeakRSSBytes) / 1e6, Double(m.targetPeakAnonBytes) / 1e6,
                         m.verifyKeysPerSec))
            try writeJSON(m, "mirror-latest.json")
        }
        if runSuites.contains("lag") {
            let bin = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let l = try await LagBench(seconds: 20, writesPerSecond: 10_000, scratch: scratch, binDir: bin, out: out).run()
            print(String(format: "lag: KT write → applied on the root, target %d updates/s (%d written in %.0f s): p50 %.2f s, p99 %.2f s, max %.2f s (%d samples of qs_bridge_lag_seconds), bridge peak RSS %.1f MB; chart %@",
                         l.writesPerSecond, l.updatesWritten, l.seconds, l.p50LagSeconds, l.p99LagSeconds, l.maxLagSeconds, l.samples,
                         Double(l.bridgePeakRSSBytes) / 1e6, l.chart))
            try writeJSON(l, "lag-latest.json")
        }
        if runSuites.contains("backlog") {
            let bin = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let b = try await BacklogBench(updates: mirrorEntries, keys: min(mirrorEntries, 100_000), valueBytes: valueBytes,
                                           scratch: scratch, binDir: bin, rounds: rounds).run()
            print(String(format: "backlog: qsktbridge replayed %d KT updates (%.0f MB capture) at %.0f updates/s; the store applies the same sets itself at %.0f/s (ratio %.3f, the median of %d rounds taking turns: %@); bridge peak RSS %.1f MB (own memory %.1f MB)",
                         b.updates, Double(b.captureBytes) / 1e6, b.bridgeUpdatesPerSec, b.localApplyUpdatesPerSec, b.ratio,
                         b.rounds.count, b.rounds.map { String(format: "%.2f", $0.ratio) }.joined(separator: " "),
                         Double(b.bridgePeakRSSBytes) / 1e6, Double(b.bridgePeakAnonBytes) / 1e6))
            try writeJSON(b, "backlog-latest.json")
        }
        if runSuites.contains("reads") {
            let bin = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let r = try await ReadBench(keys: 100_000, catchUpEntries: min(mirrorEntries, 200_000), valueBytes: valueBytes, seconds: loadSeconds,
                                        scratch: scratch, binDir: bin, rounds: rounds, readFlags: readFlags).run()
            print("reads on a replica (\(r.keys) keys of \(valueBytes) B; \(servedOn)) next to a real memcached, same run, median of \(rounds) rounds of \(loadSeconds) s:")
            for (i, q) in r.memcachedReplica.enumerated() {
                let m = r.memcachedReal[i], k = r.ktHTTPReplica[i]
                print(String(format: "  %d conn: memcached get %.0f/s (p50 %.0f µs, p99 %.0f µs) vs real memcached %.0f/s (p50 %.0f, p99 %.0f): ratio %.2f; KT HTTP GET %.0f/s (p50 %.0f, p99 %.0f): ratio %.2f",
                             q.connections, q.opsPerSec, q.p50Micros, q.p99Micros, m.opsPerSec, m.p50Micros, m.p99Micros, q.opsPerSec / max(m.opsPerSec, 1),
                             k.opsPerSec, k.p50Micros, k.p99Micros, k.opsPerSec / max(m.opsPerSec, 1)))
                let g = r.ktRPCGetReplica[i], mq = r.memcachedMultiReplica[i], mr = r.memcachedMultiReal[i]
                print(String(format: "          KT /rpc/get %.0f/s (p50 %.0f, p99 %.0f): ratio %.2f; memcached 10-key get %.0f/s (p50 %.0f, p99 %.0f) vs real %.0f/s (p50 %.0f, p99 %.0f): ratio %.2f",
                             g.opsPerSec, g.p50Micros, g.p99Micros, g.opsPerSec / max(m.opsPerSec, 1),
                             mq.opsPerSec, mq.p50Micros, mq.p99Micros, mr.opsPerSec, mr.p50Micros, mr.p99Micros, mq.opsPerSec / max(mr.opsPerSec, 1)))
                if let qc = q.serverCPUMicros, let mc = m.serverCPUMicros, let mqc = mq.serverCPUMicros, let mrc = mr.serverCPUMicros,
                   let kc = k.serverCPUMicros, let gc = g.serverCPUMicros {
                    print(String(format: "          server CPU a request (all its threads, user + kernel): get %.1f µs vs real %.1f (×%.2f); 10-key %.1f vs %.1f (×%.2f); KT GET %.1f, /rpc/get %.1f",
                                 qc, mc, qc / max(mc, 0.001), mqc, mrc, mqc / max(mrc, 0.001), kc, gc))
                }
            }
            print(String(format: "  catch-up %.0f entries/s; bootstrap %.1f MB/s vs a plain file copy %.1f MB/s (%.1f MB environment); replica own memory %.1f MB",
                         r.catchUpEntriesPerSec, r.bootstrapMBPerSec, r.fileCopyMBPerSec, Double(r.environmentBytes) / 1e6, Double(r.replicaPeakAnonBytes) / 1e6))
            try writeJSON(r, "reads-latest.json")
        }
        if runSuites.contains("engines") {
            let bin = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
            let e = try await EnginesBench(records: engineRecords, scratch: scratch, binDir: bin, loadSeconds: loadSeconds,
                                           rounds: rounds, updates: engineUpdates).run()
            e.printTable()
            try writeJSON(e, "engines-latest.json")
        }
        if runSuites.contains("rest") {
            let bin = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
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
            try writeJSON(r, "rest-latest.json")
        }
        if runSuites.contains("reads-busy") {
            let bin = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
            let r = try await BusyReadBench(keys: 100_000, rate: busyRate, rounds: rounds, seconds: loadSeconds, valueBytes: valueBytes,
                                            scratch: scratch, binDir: bin, readFlags: readFlags).run()
            print("memcached get at 8 connections on a busy replica (\(r.keys) keys), median of \(rounds) loads of \(loadSeconds) s, ratio to idle:")
            print("  phase          get/s     p99 µs  ratio  work")
            for p in r.phases {
                print(String(format: "  %-10@ %9.0f %10.0f %6.2f  %@", p.name as NSString, p.opsPerSec, p.p99Micros, p.ratio,
                             p.workUnit.isEmpty ? "" : String(format: "%.0f %@", p.work, p.workUnit)))
            }
            print(String(format: "  replica peak RSS %.1f MB, own memory %.1f MB", Double(r.replicaPeakRSSBytes) / 1e6, Double(r.replicaPeakAnonBytes) / 1e6))
            try writeJSON(r, "reads-busy-latest.json")
        }
        if runSuites.contains("propagation") {
            let bin = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
            let intervals = batchIntervals.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            let r = try PropagationBench(seconds: 20, rate: busyRate, batchIntervals: intervals, scratch: scratch, binDir: bin,
                                         ktserver: propagationKtserver.isEmpty ? nil : propagationKtserver).run()
            print("propagation: KT write → readable through memcached two replicas down, KT at \(r.targetUpdatesPerSec) updates/s:")
            for p in r.runs {
                print(String(format: "  %@ --batch-interval %@: %d probes (%d lost), p50 %.0f ms, p99 %.0f ms, max %.0f ms; bridge lag median %.2f s under load, %.2f s idle",
                             p.source, p.batchInterval, p.probes, p.lost, p.p50Millis, p.p99Millis, p.maxMillis, p.bridgeLagUnderLoadSeconds, p.bridgeLagIdleSeconds))
            }
            try writeJSON(r, "propagation-latest.json")
        }
        if runSuites.contains("cluster") {
            let bin = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
            let r = try await ClusterBench(sizes: sizes, duration: d, rounds: rounds, valueBytes: valueBytes, scratch: scratch,
                                           binDir: bin, failovers: 5).run()
            print("cluster: one writer, batches acknowledged by a 3-member root cluster on 3-member etcd vs a single root, same run, median of \(rounds) rounds of \(d):")
            for row in r.rows {
                print(String(format: "  batch %5d: single %8.0f ops/s (p50 %6.1f ms, p99 %6.1f ms); cluster %8.0f ops/s (p50 %6.1f ms, p99 %6.1f ms): ratio %.3f",
                             row.batchSize, row.single.opsPerSec, row.single.p50Millis, row.single.p99Millis,
                             row.cluster.opsPerSec, row.cluster.p50Millis, row.cluster.p99Millis, row.ratio))
            }
            print("  bridge failover when its member is SIGKILLed: \(r.failoverMillis.map { String(format: "%.0f", $0) }.joined(separator: ", ")) ms")
            try writeJSON(r, "cluster-latest.json")
        }
        if runSuites.contains("bootstrap") {
            let bin = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
            let mbs = bootstrapSizes.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard !mbs.isEmpty, mbs.allSatisfy({ $0 > 0 }) else { throw ValidationError("--bootstrap-sizes needs sizes in MB, e.g. 100,500,1000") }
            let r = try await BootstrapBench(sizesMB: mbs, concurrent: bootstrapReplicas, scratch: scratch, binDir: bin).run()
            r.printTable()
            try writeJSON(r, "bootstrap-latest.json")
        }
        if runSuites.contains("fill") {
            // Not in the default list: it measures a root started elsewhere (scripts/container-memory.sh).
            guard let w = writeTarget ?? QSEnv.string("QS_BENCH_WRITE_TARGET"), case let .tcp(host, port) = try Endpoint(parsing: w),
                  let m = memcachedTarget ?? QSEnv.string("QS_BENCH_MEMCACHED_TARGET"), case let .tcp(_, mcPort) = try Endpoint(parsing: m) else {
                throw ValidationError("the fill suite needs --write-target HOST:PORT and --memcached-target HOST:PORT of a running root")
            }
            let f = try await FillBench(bytes: fillBytes.bytes, writeHost: host, writePort: port, memcachedPort: mcPort).run()
            print(String(format: "fill: %d records, %.1f MB of payload written in %.1f s; read back through memcached in %.1f s: %d equal, %d missing or different",
                         f.records, Double(f.payloadBytes) / 1e6, f.writeSeconds, f.readSeconds, f.recordsRead, f.mismatches))
            try writeJSON(f, "fill-latest.json")
            guard f.mismatches == 0 else { throw BenchError("fill: \(f.mismatches) records did not read back as written") }
        }
        if runSuites.contains("scale") {
            // Not in the default list: the 5,000,000-key row alone takes minutes.
            let bin = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
            let counts = scaleKeys.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard !counts.isEmpty, counts.allSatisfy({ $0 >= 1_000 }) else {
                throw ValidationError("--scale-keys needs key counts of at least 1000, e.g. 100000,1000000,5000000")
            }
            let r = try await ScaleBench(keyCounts: counts, valueBytes: valueBytes, seconds: loadSeconds, writeDuration: d, rounds: rounds,
                                         scratch: scratch, binDir: bin, readFlags: readFlags).run()
            r.printTable()
            try writeJSON(r, "scale-latest.json")
        }
        if runSuites.contains("read-loop") {
            let r = try await ReadLoopBench(keys: 100_000, reads: reads, valueBytes: valueBytes, scratch: scratch).run()
            print(String(format: "read-loop: %d lookups of %d keys in this process: store %.0f/s (checksum checked), plain mdb_get %.0f/s: ratio %.3f",
                         r.reads, r.keys, r.storeReadsPerSec, r.lmdbReadsPerSec, r.ratio))
            try writeJSON(r, "read-loop-latest.json")
        }
        guard writes else { return }
        guard rounds > 0, batches >= 0 else { throw ValidationError("--rounds must be positive and --batches not negative") }
        for keys in workloads {
            let report = try await WriteBench(sizes: sizes, duration: d, batches: batches, rounds: rounds, valueBytes: valueBytes,
                                              scratch: scratch, target: target, window: writeWindow,
                                              prefill: keys == .overwrite ? writeKeyspace : 0, keys: keys).run()
            report.printTable()
            // New keys keep the file names the figures so far were recorded under.
            let name = keys == .new ? "root-write" : "root-write-overwrite"
            let stamp = report.recordedAt.replacingOccurrences(of: ":", with: "")
            try writeJSON(report, "\(name)-\(stamp).json")
            try writeJSON(report, "\(name)-latest.json")
            print("results: \(out)/\(name)-\(stamp).json")
        }
    }

    /// Writes `value` as JSON to `<out>/<file>`.
    func writeJSON<T: Encodable>(_ value: T, _ file: String) throws {
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        enc.keyEncodingStrategy = .convertToSnakeCase
        try enc.encode(value).write(to: URL(fileURLWithPath: "\(out)/\(file)"))
    }
}

/// `write_bytes` of /proc/PID/io (bytes the process caused to be sent to storage). The
/// kernel counts it per page-cache folio dirtied, so on a kernel with large folios (ext4
/// on Linux 6.x) it can exceed what reaches the device: a root's run here counted 1.37x
/// its `wchar`, which the device's own sector count matched (docs/benchmarks.md).
func writeBytes(pid: Int32?) -> Int { ioCounter("write_bytes", pid: pid) }

/// Bytes the process handed to `write`-family system calls (`wchar` of /proc/PID/io):
/// what LMDB's `pwrite`s asked for, page by page, whatever the page cache's folio size.
/// Includes socket writes (a root's answers: tens of bytes a batch).
func syscallWriteBytes(pid: Int32?) -> Int { ioCounter("wchar", pid: pid) }

/// One counter of /proc/PID/io (/proc/self/io for nil), 0 when unreadable.
func ioCounter(_ name: String, pid: Int32?) -> Int {
    let path = pid.map { "/proc/\($0)/io" } ?? "/proc/self/io"
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return 0 }
    for line in text.split(separator: "\n") where line.hasPrefix(name + ":") {
        return Int(line.split(separator: " ").last ?? "") ?? 0
    }
    return 0
}

/// Anonymous resident memory (RssAnon: the process's own heap and stacks, not LMDB's
/// file-backed map) in bytes.
func anonRSS(pid: Int32?) -> Int { ProcessMemory.statusBytes("RssAnon", pid: pid) ?? 0 }

/// Peak resident set size (VmHWM) in bytes, LMDB's mapped pages included.
func peakRSS(pid: Int32?) -> Int { ProcessMemory.statusBytes("VmHWM", pid: pid) ?? 0 }

/// The benches' key for record `i`: `key/` and eight zero-padded digits (`key/00000042`),
/// the same in every suite so their stores and loads line up. Built without
/// `String(format:)`, which costs more than a store write in a load generator's loop.
func benchKey(_ i: Int) -> String {
    let digits = String(i)
    return "key/" + String(repeating: "0", count: max(0, 8 - digits.count)) + digits
}

/// `--write-keys`: one or both root-write workloads, in the order given, each once.
struct WriteKeysList: ExpressibleByArgument, DescribedArgument, Sendable, CustomStringConvertible {
    let workloads: [WriteBench.Keys]

    init?(argument: String) {
        var list = [WriteBench.Keys]()
        for part in argument.split(separator: ",", omittingEmptySubsequences: false) {
            guard let k = WriteBench.Keys(rawValue: part.trimmingCharacters(in: .whitespaces)), !list.contains(k) else { return nil }
            list.append(k)
        }
        workloads = list
    }

    static var expectation: String { "new, overwrite or both comma separated (new,overwrite)" }
    var description: String { workloads.map(\.rawValue).joined(separator: ",") }
    var defaultValueDescription: String { description }
}
