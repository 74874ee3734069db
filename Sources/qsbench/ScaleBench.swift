import Foundation

/// The `scale` suite (issue 12's scale curve): how the main figures move as the store
/// grows, one row per key count (`--scale-keys`, default 100,000, 1,000,000 and 5,000,000
/// keys of `--value-bytes`): memcached `get` and KT `GET` on a replica against a real
/// memcached holding the same keys, replica catch-up in entries/s, bootstrap MB/s against
/// `cp` of the same environment, the replica's own memory, and root writes at batches of
/// 100 against the plain LMDB loop, both stores holding the keys first: sets of new keys
/// in order, and sets of random keys among those held (`root-write --write-keys
/// overwrite`, whose cost grows with the keyspace). Each row is the `reads` and
/// `root-write` suites run at that size, so its ratios mean what theirs do.
struct ScaleBench {
    let keyCounts: [Int]
    let valueBytes: Int
    let seconds: Double
    let writeDuration: Duration
    let rounds: Int
    let scratch: String
    let binDir: URL
    /// The replicas' read flags (`ReadBench.readFlags`).
    var readFlags: [String] = []

    struct Row: Codable {
        var keys: Int
        var environmentBytes: Int
        var memcachedGetRatio1: Double
        var memcachedGetRatio8: Double
        var memcachedGetsPerSec1: Double
        var memcachedGetsPerSec8: Double
        var ktGetRatio1: Double
        var catchUpEntriesPerSec: Double
        var bootstrapMBPerSec: Double
        var fileCopyMBPerSec: Double
        var replicaOwnMemoryBytes: Int
        var rootWriteRatio100: Double
        var rootWriteOpsPerSec100: Double
        var lmdbWriteOpsPerSec100: Double
        var rootWriteDiskRatio100: Double
        /// The same with random updates of the keys held (`--write-keys overwrite`); the
        /// bytes as handed to `pwrite` (`wchar`), which the page cache's folio sizes do not
        /// distort.
        var rootUpdateRatio100: Double
        var rootUpdateOpsPerSec100: Double
        var lmdbUpdateOpsPerSec100: Double
        var rootUpdateSyscallRatio100: Double
    }

    struct Report: Codable {
        var benchmark = "scale"
        var recordedAt: String
        var valueBytes: Int
        var rows: [Row]
        var note = "each row: the reads suite (replica vs a real memcached holding the same keys, same run) and the root-write suite at batches of 100 (node vs plain LMDB, both holding the keys first; new keys in order, then random updates of the keys held) at that key count"

        func printTable() {
            print("scale curve (\(valueBytes)-byte values): ratios against references measured at the same size in the same run")
            func pad(_ s: String, _ w: Int) -> String { String(repeating: " ", count: max(0, w - s.count)) + s }
            print([pad("keys", 9), pad("env MB", 7), pad("get x1", 7), pad("get x8", 7), pad("KT GET", 7), pad("catch-up/s", 11),
                   pad("boot MB/s", 10), pad("cp MB/s", 8), pad("own mem", 8), pad("write 100", 10), pad("disk x", 7), pad("update 100", 11), pad("sys x", 6)].joined(separator: " "))
            for r in rows {
                print(String(format: "%9d %7.0f %7.2f %7.2f %7.2f %11.0f %10.0f %8.0f %6.1fMB %10.3f %7.2f %11.3f %6.2f", r.keys, Double(r.environmentBytes) / 1e6,
                             r.memcachedGetRatio1, r.memcachedGetRatio8, r.ktGetRatio1, r.catchUpEntriesPerSec, r.bootstrapMBPerSec,
                             r.fileCopyMBPerSec, Double(r.replicaOwnMemoryBytes) / 1e6, r.rootWriteRatio100, r.rootWriteDiskRatio100,
                             r.rootUpdateRatio100, r.rootUpdateSyscallRatio100))
            }
        }
    }

    func run() async throws -> Report {
        var rows = [Row]()
        for keys in keyCounts {
            FileHandle.standardError.write(Data("scale: \(keys) keys: reads\n".utf8))
            let dir = scratch + "/scale-\(keys)"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            let r = try await ReadBench(keys: keys, catchUpEntries: min(keys, 200_000), valueBytes: valueBytes, seconds: seconds,
                                        scratch: dir, binDir: binDir, rounds: rounds, readFlags: readFlags).run()
            try? FileManager.default.removeItem(atPath: dir)
            FileHandle.standardError.write(Data("scale: \(keys) keys: root writes\n".utf8))
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            let w = try await WriteBench(sizes: [100], duration: writeDuration, batches: 0, rounds: 1, valueBytes: valueBytes,
                                         scratch: dir, target: nil, prefill: keys).run()
            try? FileManager.default.removeItem(atPath: dir)
            FileHandle.standardError.write(Data("scale: \(keys) keys: root updates\n".utf8))
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            let u = try await WriteBench(sizes: [100], duration: writeDuration, batches: 0, rounds: 1, valueBytes: valueBytes,
                                         scratch: dir, target: nil, prefill: keys, keys: .overwrite).run()
            try? FileManager.default.removeItem(atPath: dir)
            func ratio(_ a: ReadBench.Load?, _ b: ReadBench.Load?) -> Double { (a?.opsPerSec ?? 0) / max(b?.opsPerSec ?? 0, 1) }
            let one = r.memcachedReplica.firstIndex { $0.connections == 1 }, eight = r.memcachedReplica.firstIndex { $0.connections == 8 }
            let row = w.rows.first
            rows.append(Row(keys: keys, environmentBytes: r.environmentBytes,
                            memcachedGetRatio1: ratio(one.map { r.memcachedReplica[$0] }, one.map { r.memcachedReal[$0] }),
                            memcachedGetRatio8: ratio(eight.map { r.memcachedReplica[$0] }, eight.map { r.memcachedReal[$0] }),
                            memcachedGetsPerSec1: one.map { r.memcachedReplica[$0].opsPerSec } ?? 0,
                            memcachedGetsPerSec8: eight.map { r.memcachedReplica[$0].opsPerSec } ?? 0,
                            ktGetRatio1: ratio(one.map { r.ktHTTPReplica[$0] }, one.map { r.memcachedReal[$0] }),
                            catchUpEntriesPerSec: r.catchUpEntriesPerSec, bootstrapMBPerSec: r.bootstrapMBPerSec,
                            fileCopyMBPerSec: r.fileCopyMBPerSec, replicaOwnMemoryBytes: r.replicaPeakAnonBytes,
                            rootWriteRatio100: row?.ratio ?? 0, rootWriteOpsPerSec100: row?.nodeOpsPerSec ?? 0,
                            lmdbWriteOpsPerSec100: row?.lmdbOpsPerSec ?? 0, rootWriteDiskRatio100: row?.diskRatio ?? 0,
                            rootUpdateRatio100: u.rows.first?.ratio ?? 0, rootUpdateOpsPerSec100: u.rows.first?.nodeOpsPerSec ?? 0,
                            lmdbUpdateOpsPerSec100: u.rows.first?.lmdbOpsPerSec ?? 0,
                            rootUpdateSyscallRatio100: u.rows.first?.syscallRatio ?? 0))
        }
        return Report(recordedAt: ISO8601DateFormatter().string(from: Date()), valueBytes: valueBytes, rows: rows)
    }
}
