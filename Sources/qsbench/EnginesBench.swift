import Foundation
import QSClient
import QSModel
import QSStore
import QSTesting

/// LMDB against RocksDB (LZ4, zstd and no compression) on data shaped like configuration
/// data, each through the store itself (records, log entries, checkpoints, synced batches):
/// bytes on disk per payload byte once loaded, and bytes the process sent to the disk per
/// payload byte at batches of 1, 100 and 5,000 (write amplification; `/proc/self/io`, which
/// counts RocksDB's flushes and compactions too: they run on its threads in this process),
/// each measured after the store settles (`Store.settle`: RocksDB's memtables flushed and
/// its tables compacted, so its WAL is not counted as its data). Then, per engine, the
/// loaded store becomes a root (`qsnode`) and a replica of the same engine bootstraps from
/// it (MB/s), serves memcached `get`s of every key (the reads suite's closed-loop client,
/// p50/p99 and gets/s at 1 and 8 connections), and applies a stream of updates while both
/// nodes' CPU seconds (utime + stime from /proc) are read.
struct EnginesBench {
    let records: Int
    let scratch: String
    let binDir: URL
    /// Seconds of each read load, and rounds of it (the median is reported).
    var loadSeconds = 5.0
    var rounds = 3
    /// Updates the root takes (overwrites of the loaded keys, batches of `updateBatch`) while
    /// the CPU of the root and the replica applying them is read.
    var updates = 100_000
    var updateBatch = 1_000

    struct Engine: Codable {
        var name: String
        var payloadBytes: Int
        var diskBytes: Int
        var diskPerPayload: Double
        /// Batch size → bytes written per payload byte.
        var writeAmplification: [String: Double]
        var loadSeconds: Double
        /// A replica of this engine bootstrapping from a root of this engine: payload bytes
        /// per second and the root's store bytes (what the snapshot ships) per second.
        var bootstrapPayloadMBPerSec: Double
        var bootstrapStoreMBPerSec: Double
        var bootstrapSeconds: Double
        /// memcached `get` of single keys on the replica, at 1 and 8 connections.
        var memcachedGet: [ReadBench.Load]
        /// CPU seconds (utime + stime) per 100,000 updates applied: by the root taking them
        /// over the write protocol, by the replica applying them from the root's log.
        var rootCPUSecondsPer100k: Double
        var replicaCPUSecondsPer100k: Double
        var updatesPerSec: Double
        /// The replica's own memory (RssAnon: heap, RocksDB's cache and memtables included)
        /// and its whole resident set (LMDB's mapped pages included), at their peak.
        var replicaAnonBytes: Int
        var replicaRSSBytes: Int
    }

    struct Result: Codable {
        var records: Int
        var engines: [Engine]
        var loadSeconds: Double
        var rounds: Int
        var updates: Int
        var updateBatch: Int
        var note = "payload = key + value bytes of the sets; disk = allocated blocks of the data directory after the load and Store.settle (LMDB: data.mdb; RocksDB: SST, WAL, MANIFEST, memtables flushed and tables compacted); written = /proc/self/io write_bytes during the batches and the settle; every value is stored twice (the record and its log entry) on both engines; bootstrap, memcached get and CPU: the batch-5000 store served by a qsnode root, a replica of the same engine bootstrapped from it; CPU = utime + stime of /proc/PID/stat while the updates are applied"
    }

    /// Keys with shared prefixes (`zone:1234/rule:…`), values of 20 B to 10 KB (most
    /// short, as configuration is), text-like (field names repeat, numbers vary), one in
    /// ten expiring.
    static func key(_ i: Int) -> String { "zone:\(String(format: "%04d", i / 50))/rule:\(String(format: "%06d", i))" }

    /// Record `i`; `version` > 0 gives the same key and size another value (an update).
    static func record(_ i: Int, version: Int = 0) -> Mutation {
        let key = Self.key(i)
        let sizes = [20, 60, 120, 300, 700, 1_500, 4_000, 10_000]
        let weights = [25, 25, 20, 12, 8, 5, 3, 2]
        var pick = (i &* 37) % 100, slot = 0
        while pick >= weights[slot] { pick -= weights[slot]; slot += 1 }
        var value = "", n = i &+ version &* 1_000_003
        while value.utf8.count < sizes[slot] {
            n = n &* 1_103_515_245 &+ 12_345
            let r = (n >> 8) & 0xFF_FFFF
            value += "{\"action\":\"\(["block", "allow", "challenge", "log"][r % 4])\",\"expr\":\"ip.src in 10.\(r % 256).\((r >> 8) % 256).0/24\",\"priority\":\(r % 1000),\"id\":\"\(String(r, radix: 16))\"}"
        }
        let expiry: UInt64? = i % 10 == 0 ? wallClockSeconds() + 86_400 : nil
        return .set(key: Array(key.utf8), value: Array(value.utf8.prefix(sizes[slot])), expiry: expiry)
    }

    func run() async throws -> Result {
        let configs: [(String, EngineKind, RocksDBCompression)] = [
            ("lmdb", .lmdb, .lz4),
            ("rocksdb-lz4", .rocksdb, .lz4),
            ("rocksdb-zstd", .rocksdb, .zstd),
            ("rocksdb-none", .rocksdb, .none),
        ]
        var rows = [Engine]()
        for (name, kind, compression) in configs {
            var amplification = [String: Double]()
            var loaded = (payload: 0, disk: 0, seconds: 0.0)
            let rootDir = "\(scratch)/engines-\(name)-5000"
            for batch in [1, 100, 5_000] {
                let dir = "\(scratch)/engines-\(name)-\(batch)"
                FileHandle.standardError.write(Data("engines: \(name), batches of \(batch)\n".utf8))
                // Batches of 1 are slow (one fsync each): 2,000 records are enough.
                let m = try await load(dir, kind, .init(compression: compression), records: batch == 1 ? min(records, 2_000) : records, batch: batch)
                amplification[String(batch)] = Double(m.written) / Double(m.payload)
                if batch == 5_000 { loaded = (m.payload, m.disk, m.seconds) } else { try? FileManager.default.removeItem(atPath: dir) }
            }
            var row = Engine(name: name, payloadBytes: loaded.payload, diskBytes: loaded.disk,
                             diskPerPayload: Double(loaded.disk) / Double(max(loaded.payload, 1)),
                             writeAmplification: amplification, loadSeconds: loaded.seconds, bootstrapPayloadMBPerSec: 0,
                             bootstrapStoreMBPerSec: 0, bootstrapSeconds: 0, memcachedGet: [], rootCPUSecondsPer100k: 0,
                             replicaCPUSecondsPer100k: 0, updatesPerSec: 0, replicaAnonBytes: 0, replicaRSSBytes: 0)
            try await serve(rootDir, kind, compression, into: &row)
            try? FileManager.default.removeItem(atPath: rootDir)
            try? FileManager.default.removeItem(atPath: rootDir + "-replica")
            rows.append(row)
        }
        return Result(records: records, engines: rows, loadSeconds: loadSeconds, rounds: rounds, updates: updates, updateBatch: updateBatch)
    }

    /// The loaded store in `rootDir` served by a root; a replica of the same engine
    /// bootstraps from it, serves memcached gets, and applies `updates` updates.
    func serve(_ rootDir: String, _ kind: EngineKind, _ compression: RocksDBCompression, into row: inout Engine) async throws {
        let engineFlags = ["--engine", kind.rawValue, "--rocksdb-compression", compression.rawValue]
        let root = try startDaemon(binDir, scratch, "qsnode", ["--data", rootDir, "--listen", "127.0.0.1:0", "--log-level", "warning"] + engineFlags)
        defer { _ = try? root.stop() }
        let rootClient = try await QSClient.connect(host: "127.0.0.1", port: try root.port("write"))
        var head = try await rootClient.head()

        FileHandle.standardError.write(Data("engines: \(row.name): bootstrap\n".utf8))
        let (replica, seconds) = try await startReplica(binDir, scratch, rootDir + "-replica", upstream: try root.port("write"), until: head,
                                                        extra: engineFlags + ["--memcached", "127.0.0.1:0", "--memcached-flags-in-value", "false"])
        defer { _ = try? replica.stop() }
        row.bootstrapSeconds = seconds
        row.bootstrapPayloadMBPerSec = Double(row.payloadBytes) / 1e6 / seconds
        row.bootstrapStoreMBPerSec = Double(row.diskBytes) / 1e6 / seconds

        FileHandle.standardError.write(Data("engines: \(row.name): memcached get\n".utf8))
        let gets = Requests((0..<records).map { Array("get \(Self.key($0))\r\n".utf8) })
        let port = try replica.port("memcached")
        // One pass over every key first (gets of 100 keys), so neither engine is measured cold.
        guard let fd = Harness.connectLoopback(port: port) else { throw BenchError("engines: the replica's memcached port is not reachable") }
        for from in stride(from: 0, to: records, by: 100) {
            let line = "get " + (from..<min(records, from + 100)).map(Self.key).joined(separator: " ") + "\r\n"
            guard exchange(fd, Array(line.utf8), done: isMemcachedDone) else { close(fd); throw BenchError("engines: a warming get failed") }
        }
        close(fd)
        for connections in [1, 8] {
            let taken = (0..<rounds).map { _ in
                closedLoop(port: port, connections: connections, seconds: loadSeconds, requests: gets, done: isMemcachedDone)
            }
            row.memcachedGet.append(ReadBench.Load.median(taken))
        }

        FileHandle.standardError.write(Data("engines: \(row.name): \(updates) updates\n".utf8))
        let replicaClient = try await QSClient.connect(host: "127.0.0.1", port: try replica.port("write"))
        defer { Task { await replicaClient.close() } }
        let rootBefore = cpuSeconds(pid: root.pid), replicaBefore = cpuSeconds(pid: replica.pid)
        let start = ContinuousClock.now
        var done = 0, batch = 0
        while done < updates {
            let n = min(updateBatch, updates - done)
            let ops = (done..<(done + n)).map { Self.record($0 % records, version: 1 + $0 / records) }
            let r = try await rootClient.batch(sourceID: "engines-updates", expected: UInt64(batch), new: UInt64(batch + 1), operations: ops)
            guard case .applied = r else { throw BenchError("engines: the root answered \(r) to an update batch") }
            done += n
            batch += 1
        }
        head = try await rootClient.head()
        let caughtUp = await Harness.eventually(timeout: .seconds(300), pollEvery: .milliseconds(10)) { (try? await replicaClient.head()) == head }
        guard caughtUp else { throw BenchError("engines: the \(row.name) replica did not apply the updates; log:\n\(replica.log)") }
        let elapsed = (ContinuousClock.now - start).seconds
        row.updatesPerSec = Double(updates) / elapsed
        row.rootCPUSecondsPer100k = (cpuSeconds(pid: root.pid) - rootBefore) * 100_000 / Double(updates)
        row.replicaCPUSecondsPer100k = (cpuSeconds(pid: replica.pid) - replicaBefore) * 100_000 / Double(updates)
        row.replicaAnonBytes = anonRSS(pid: replica.pid)
        row.replicaRSSBytes = peakRSS(pid: replica.pid)
        await rootClient.close()
    }

    /// Writes `records` records in batches of `batch` to a new store in `dir`; the payload,
    /// the bytes the process wrote meanwhile, the store's allocated bytes after, the time.
    func load(_ dir: String, _ kind: EngineKind, _ options: RocksDBOptions, records n: Int,
              batch: Int) async throws -> (payload: Int, written: Int, disk: Int, seconds: Double) {
        let store = try await Store.open(directory: dir, mapSize: 16 << 30, engine: kind, rocksDB: options)
        var payload = 0
        let before = writeBytes(pid: nil)
        let start = ContinuousClock.now
        var i = 0, entry: UInt64 = 0
        while i < n {
            var ops = [Mutation]()
            for j in i..<min(n, i + batch) {
                let m = Self.record(j)
                if case let .set(k, v, _) = m { payload += k.count + v.count }
                ops.append(m)
            }
            _ = try await store.applyBatch(sourceID: "bench", expected: entry, new: entry + 1, operations: ops)
            entry += 1
            i += batch
        }
        let seconds = (ContinuousClock.now - start).seconds
        // What is still in memtables is written once more when they are flushed: count it.
        try await store.settle()
        return (payload, writeBytes(pid: nil) - before, allocatedBytes(dir), seconds)
    }

    /// Blocks allocated to the files of `dir` (sparse parts of LMDB's file not counted).
    func allocatedBytes(_ dir: String) -> Int {
        var total = 0
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
            var st = stat()
            if stat(dir + "/" + name, &st) == 0 { total += Int(st.st_blocks) * 512 }
        }
        return total
    }
}

/// CPU seconds (utime + stime, /proc/PID/stat fields 14 and 15) the process has used.
func cpuSeconds(pid: Int32) -> Double {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = text.lastIndex(of: ")") else { return 0 }
    // Fields after the command name (which may hold spaces), from field 3 (state) on.
    let fields = text[text.index(after: close)...].split(separator: " ")
    guard fields.count > 13, let utime = Double(fields[11]), let stime = Double(fields[12]) else { return 0 }
    return (utime + stime) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

extension EnginesBench.Result {
    /// The table on stdout (the JSON has every round).
    func printTable() {
        print("engines: \(records) configuration-shaped records (keys zone:NNNN/rule:NNNNNN, values 20 B to 10 KB, a tenth expiring); replicas of each engine; \(updates) updates in batches of \(updateBatch); gets: median of \(rounds) rounds of \(loadSeconds) s")
        print("  engine        disk/payload  written/payload b1    b100   b5000 | get 1 conn/s (p50, p99 µs) | get 8 conn/s (p50, p99 µs) | CPU s/100k root replica | bootstrap MB/s payload (store) | replica anon MB")
        for r in engines {
            let g1 = r.memcachedGet.first, g8 = r.memcachedGet.last
            print("  " + r.name.padding(toLength: 13, withPad: " ", startingAt: 0)
                + String(format: " %12.2f %18.2f %7.2f %7.2f | %8.0f (%4.0f, %5.0f) | %8.0f (%4.0f, %5.0f) | %11.2f %7.2f | %14.1f (%5.1f) | %6.1f",
                         r.diskPerPayload, r.writeAmplification["1"] ?? 0, r.writeAmplification["100"] ?? 0, r.writeAmplification["5000"] ?? 0,
                         g1?.opsPerSec ?? 0, g1?.p50Micros ?? 0, g1?.p99Micros ?? 0, g8?.opsPerSec ?? 0, g8?.p50Micros ?? 0, g8?.p99Micros ?? 0,
                         r.rootCPUSecondsPer100k, r.replicaCPUSecondsPer100k, r.bootstrapPayloadMBPerSec, r.bootstrapStoreMBPerSec,
                         Double(r.replicaAnonBytes) / 1e6))
        }
    }
}
