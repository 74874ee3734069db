import Foundation
import QSModel
import QSStore

/// The `read-loop` suite: a fixed number of lookups of uniform random keys in this process,
/// through the store's read path (`readInline(in:)` + `withRecord`: a kept read transaction
/// renewed and reset per lookup, the record's checksum checked, as a memcached `get` on an
/// event loop does) and, as the reference, a plain `mdb_get` loop on an LMDB environment of
/// the same shape (same stored keys, values of the same size), its kept transaction renewed
/// and reset the same way. No sockets: under callgrind this isolates what the store adds to a
/// read, the XXH3 check among it (`XXH3_64bits*` in the profile).
struct ReadLoopBench {
    let keys: Int
    let reads: Int
    let valueBytes: Int
    let scratch: String

    struct Result: Codable {
        var keys: Int
        var reads: Int
        var storeReadsPerSec: Double
        var lmdbReadsPerSec: Double
        var ratio: Double
        var note = "store = Store.readInline(in: slot) + StoreTransaction.withRecord (checksum checked), a kept read transaction renewed and reset per lookup; lmdb = mdb_txn_renew + mdb_get + mdb_txn_reset per lookup"
    }

    func key(_ i: Int) -> [UInt8] { Array(benchKey(i).utf8) }

    func run() async throws -> Result {
        let storeDir = scratch + "/loop-store", lmdbDir = scratch + "/loop-lmdb"
        let value = [UInt8](repeating: 0x76, count: valueBytes)
        let store = try await Store.open(directory: storeDir, noSync: true)
        try FileManager.default.createDirectory(atPath: lmdbDir, withIntermediateDirectories: true)
        let env = try LMDBEnvironment(path: lmdbDir, options: .init(noSync: true))
        let db = try env.openDatabase("kv")
        var batch = 0
        for from in stride(from: 0, to: keys, by: 10_000) {
            let ops: [Mutation] = (from..<min(keys, from + 10_000)).map { .set(key: key($0), value: value, expiry: nil) }
            _ = try await store.applyBatch(sourceID: "load", expected: UInt64(batch), new: UInt64(batch + 1), operations: ops)
            try env.write { txn in
                for i in from..<min(keys, from + 10_000) { try txn.put(db, [KeyEncoding.tag] + key(i), value) }
            }
            batch += 1
        }
        // The same pseudo-random order for both, made before the clock starts.
        var x: UInt64 = 0x9E37_79B9_7F4A_7C15
        let order: [[UInt8]] = (0..<min(reads, 1 << 16)).map { _ in
            x ^= x << 13; x ^= x >> 7; x ^= x << 17
            return key(Int(x % UInt64(keys)))
        }
        let stored = order.map { [KeyEncoding.tag] + $0 }
        var found = 0
        let slot = store.makeReadSlot()
        let kept = env.makeReadSlot()
        var start = ContinuousClock.now
        for i in 0..<reads {
            found += try store.readInline(in: slot) { txn in try txn.withRecord(order[i & 0xFFFF]) { $0?.value.count ?? 0 } }
        }
        let storeSeconds = (ContinuousClock.now - start).seconds
        start = ContinuousClock.now
        for i in 0..<reads {
            found += try env.read(in: kept) { txn in try stored[i & 0xFFFF].withUnsafeBytes { k in try txn.withValue(db, k) { $0?.count ?? 0 } } }
        }
        let lmdbSeconds = (ContinuousClock.now - start).seconds
        guard found == 2 * reads * valueBytes else { throw BenchError("read-loop: \(found) bytes read, expected \(2 * reads * valueBytes): keys missing") }
        return Result(keys: keys, reads: reads, storeReadsPerSec: Double(reads) / storeSeconds, lmdbReadsPerSec: Double(reads) / lmdbSeconds,
                      ratio: lmdbSeconds / storeSeconds)
    }
}
