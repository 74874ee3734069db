import CRocksDB
import Foundation
import Glibc

/// A RocksDB read or write transaction (a write one has a `batch`).
struct RocksDBTransaction {
    let db: OpaquePointer
    let families: RocksDBFamilies
    let readOptions: OpaquePointer
    let batch: OpaquePointer?

    func get(_ table: Table, _ key: [UInt8]) throws -> [UInt8]? {
        try key.withUnsafeBytes { k in
            try withValue(table, k) { v in v.map { Array($0) } }
        }
    }

    @inline(__always)
    func withValue<T>(_ table: Table, _ key: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer?) throws -> T) throws -> T {
        var err: UnsafeMutablePointer<CChar>?
        let cf = families[table]
        let k = key.baseAddress?.assumingMemoryBound(to: CChar.self)
        if let batch {
            var len = 0
            let v = rocksdb_writebatch_wi_get_from_batch_and_db_cf(batch, db, readOptions, cf, k, key.count, &len, &err)
            try RocksDBError.check(err, "get")
            guard let v else { return try body(nil) }
            defer { rocksdb_free(v) }
            return try body(UnsafeRawBufferPointer(start: v, count: len))
        }
        let slice = rocksdb_get_pinned_cf(db, readOptions, cf, k, key.count, &err)
        try RocksDBError.check(err, "get")
        guard let slice else { return try body(nil) }
        defer { rocksdb_pinnableslice_destroy(slice) }
        var len = 0
        let v = rocksdb_pinnableslice_value(slice, &len)
        return try body(UnsafeRawBufferPointer(start: v, count: len))
    }

    func put(_ table: Table, _ key: [UInt8], _ value: [UInt8]) throws {
        try key.withUnsafeBytes { k in try value.withUnsafeBytes { v in try put(table, k, v) } }
    }

    func put(_ table: Table, _ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) throws {
        guard let batch else { throw StoreError.readOnlyTransaction }
        rocksdb_writebatch_wi_put_cf(batch, families[table], key.baseAddress?.assumingMemoryBound(to: CChar.self), key.count,
                                     value.baseAddress?.assumingMemoryBound(to: CChar.self), value.count)
    }

    func delete(_ table: Table, _ key: [UInt8]) throws -> Bool {
        guard let batch else { throw StoreError.readOnlyTransaction }
        guard try get(table, key) != nil else { return false }
        key.withUnsafeBytes { k in
            rocksdb_writebatch_wi_delete_cf(batch, families[table], k.baseAddress?.assumingMemoryBound(to: CChar.self), k.count)
        }
        return true
    }

    func forEach(_ table: Table, from: [UInt8]?, _ body: (_ key: [UInt8], _ value: [UInt8]) throws -> Bool) throws {
        let cf = families[table]
        let base = rocksdb_create_iterator_cf(db, readOptions, cf)
        // The batch's iterator takes the base iterator over (and frees it with itself).
        guard let it = batch.map({ rocksdb_writebatch_wi_create_iterator_with_base_cf($0, base, cf) }) ?? base else {
            throw RocksDBError(operation: "create_iterator", message: "no iterator returned")
        }
        defer { rocksdb_iter_destroy(it) }
        if let from {
            from.withUnsafeBytes { f in rocksdb_iter_seek(it, f.baseAddress?.assumingMemoryBound(to: CChar.self), f.count) }
        } else {
            rocksdb_iter_seek_to_first(it)
        }
        while rocksdb_iter_valid(it) != 0 {
            var kl = 0, vl = 0
            let k = rocksdb_iter_key(it, &kl)
            let v = rocksdb_iter_value(it, &vl)
            let key = kl > 0 && k != nil ? Array(UnsafeRawBufferPointer(start: k, count: kl)) : []
            let value = vl > 0 && v != nil ? Array(UnsafeRawBufferPointer(start: v, count: vl)) : []
            if try !body(key, value) { return }
            rocksdb_iter_next(it)
        }
        var err: UnsafeMutablePointer<CChar>?
        rocksdb_iter_get_error(it, &err)
        try RocksDBError.check(err, "iterate")
    }

    /// Counts by iterating: RocksDB keeps no exact count (docs/storage.md, "Engines").
    func count(_ table: Table) throws -> Int {
        var n = 0
        try forEach(table, from: nil) { _, _ in
            n += 1
            return true
        }
        return n
    }

    func removeAll(_ table: Table) throws {
        guard let batch else { throw StoreError.readOnlyTransaction }
        var doomed = [[UInt8]]()
        try forEach(table, from: nil) { k, _ in
            doomed.append(k)
            return true
        }
        for k in doomed {
            k.withUnsafeBytes { kp in
                rocksdb_writebatch_wi_delete_cf(batch, families[table], kp.baseAddress?.assumingMemoryBound(to: CChar.self), kp.count)
            }
        }
    }
}
