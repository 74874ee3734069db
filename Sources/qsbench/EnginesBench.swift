import Foundation
import QSModel
import QSStore

/// LMDB against RocksDB (LZ4 on and off) on data shaped like configuration data, each
/// through the store itself (records, log entries, checkpoints, synced batches): bytes on
/// disk per payload byte once loaded, and bytes the process sent to the disk per payload
/// byte at batches of 1, 100 and 5,000 (write amplification; `/proc/self/io`, which counts
/// RocksDB's flushes and compactions too: they run on its threads in this process), each
/// measured after the store settles (`Store.settle`: RocksDB's memtables flushed and its
/// tables compacted, so its WAL is not counted as its data).
struct EnginesBench {
    let records: Int
    let scratch: String

    struct Engine: Codable {
        var name: String
        var payloadBytes: Int
        var diskBytes: Int
        var diskPerPayload: Double
        /// Batch size → bytes written per payload byte.
        var writeAmplification: [String: Double]
        var loadSeconds: Double
    }

    struct Result: Codable {
        var records: Int
        var engines: [Engine]
        var note = "payload = key + value bytes of the sets; disk = allocated blocks of the data directory after the load and Store.settle (LMDB: data.mdb; RocksDB: SST, WAL, MANIFEST, memtables flushed and tables compacted); written = /proc/self/io write_bytes during the batches and the settle; every value is stored twice (the record and its log entry) on both engines"
    }

    /// Keys with shared prefixes (`zone:1234/rule:…`), values of 20 B to 10 KB (most
    /// short, as configuration is), text-like (field names repeat, numbers vary), one in
    /// ten expiring.
    static func record(_ i: Int) -> Mutation {
        let key = "zone:\(String(format: "%04d", i / 50))/rule:\(String(format: "%06d", i))"
        let sizes = [20, 60, 120, 300, 700, 1_500, 4_000, 10_000]
        let weights = [25, 25, 20, 12, 8, 5, 3, 2]
        var pick = (i &* 37) % 100, slot = 0
        while pick >= weights[slot] { pick -= weights[slot]; slot += 1 }
        var value = "", n = i
        while value.utf8.count < sizes[slot] {
            n = n &* 1_103_515_245 &+ 12_345
            let r = (n >> 8) & 0xFF_FFFF
            value += "{\"action\":\"\(["block", "allow", "challenge", "log"][r % 4])\",\"expr\":\"ip.src in 10.\(r % 256).\((r >> 8) % 256).0/24\",\"priority\":\(r % 1000),\"id\":\"\(String(r, radix: 16))\"}"
        }
        let expiry: UInt64? = i % 10 == 0 ? wallClockSeconds() + 86_400 : nil
        return .set(key: Array(key.utf8), value: Array(value.utf8.prefix(sizes[slot])), expiry: expiry)
    }

    func run() async throws -> Result {
        let configs: [(String, EngineKind, RocksDBOptions)] = [
            ("lmdb", .lmdb, .init()),
            ("rocksdb-lz4", .rocksdb, .init(compression: true)),
            ("rocksdb-none", .rocksdb, .init(compression: false)),
        ]
        var rows = [Engine]()
        for (name, kind, options) in configs {
            var amplification = [String: Double]()
            var loaded = (payload: 0, disk: 0, seconds: 0.0)
            for batch in [1, 100, 5_000] {
                let dir = "\(scratch)/engines-\(name)-\(batch)"
                // Batches of 1 are slow (one fsync each): 2,000 records are enough.
                let m = try await load(dir, kind, options, records: batch == 1 ? min(records, 2_000) : records, batch: batch)
                amplification[String(batch)] = Double(m.written) / Double(m.payload)
                if batch == 5_000 { loaded = (m.payload, m.disk, m.seconds) }
                try? FileManager.default.removeItem(atPath: dir)
            }
            rows.append(Engine(name: name, payloadBytes: loaded.payload, diskBytes: loaded.disk,
                               diskPerPayload: Double(loaded.disk) / Double(max(loaded.payload, 1)),
                               writeAmplification: amplification, loadSeconds: loaded.seconds))
        }
        return Result(records: records, engines: rows)
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
