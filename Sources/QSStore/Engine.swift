import CLMDB
import Foundation

/// The ordered key-value tables a store keeps, whichever engine holds them
/// (docs/storage.md, "Engines").
enum Table: Sendable {
    case kv, log, meta, trail
}

/// The storage engine of a store (`qsnode --engine`, docs/storage.md "Engines").
public enum EngineKind: String, Sendable, CaseIterable {
    case lmdb, rocksdb

    /// The engine whose files `directory` holds, nil when it holds neither (a new store).
    public static func found(in directory: String) -> EngineKind? {
        if RocksDBEngine.exists(at: directory) { return .rocksdb }
        if FileManager.default.fileExists(atPath: directory + "/data.mdb") { return .lmdb }
        return nil
    }
}

/// The engine under a store: what `Store` needs from one is ordered tables (`Table`),
/// atomic multi-table write transactions committed durably, read transactions that see
/// one committed state, range cursors, and a point-in-time copy for bootstraps. An enum,
/// not a protocol: each lookup is a switch on a known case, never a witness-table call or
/// an existential box, so the read hot path (`readInline`/`withRecord`) costs what it did
/// when the store spoke to LMDB directly.
enum Engine: Sendable {
    case lmdb(LMDBEngine)
    case rocksdb(RocksDBEngine)

    /// Which engine this is.
    var kind: EngineKind {
        switch self {
        case .lmdb: return .lmdb
        case .rocksdb: return .rocksdb
        }
    }

    /// The largest key the engine stores as it is (see `KeyEncoding`).
    var maxKeySize: Int {
        switch self {
        case let .lmdb(e): return e.environment.maxKeySize
        // No limit of its own: the store keeps LMDB's, so both engines store the same
        // keys the same way (long keys hashed, the full key in the record).
        case .rocksdb: return 511
        }
    }

    /// Whether the store has the `trail` table (a read-only format 1 store may not).
    var hasTrail: Bool {
        switch self {
        case let .lmdb(e): return e.tables.trail != nil
        case .rocksdb: return true
        }
    }

    /// Runs `body` in a read transaction: one committed state, never waiting for a writer.
    @inline(__always)
    func read<T>(_ body: (borrowing EngineTransaction) throws -> T) throws -> T {
        switch self {
        case let .lmdb(e):
            return try e.environment.read { txn in try body(EngineTransaction(handle: .lmdb(txn.txn, e.tables))) }
        case let .rocksdb(e):
            return try e.read { txn in try body(EngineTransaction(handle: .rocksdb(txn))) }
        }
    }

    /// Runs `body` in a write transaction committed (durably, unless opened `noSync`) when
    /// it returns, rolled back when it throws.
    func write<T>(_ body: (borrowing EngineTransaction) throws -> T) throws -> T {
        switch self {
        case let .lmdb(e):
            return try e.environment.write { txn in try body(EngineTransaction(handle: .lmdb(txn.txn, e.tables))) }
        case let .rocksdb(e):
            return try e.write { txn in try body(EngineTransaction(handle: .rocksdb(txn))) }
        }
    }

    /// The bytes the store takes and the most it may take (LMDB: its map).
    func usage() -> (usedBytes: Int, mapSizeBytes: Int) {
        switch self {
        case let .lmdb(e): return e.environment.usage()
        case let .rocksdb(e): return e.usage()
        }
    }

    /// Writes a consistent copy of the store to an open file descriptor (LMDB:
    /// `mdb_env_copyfd2`, compacting unless told not to).
    func copy(toFileDescriptor fd: Int32, compact: Bool) throws {
        switch self {
        case let .lmdb(e): try e.environment.copy(toFileDescriptor: fd, compact: compact)
        case .rocksdb:
            throw StoreError.io("a RocksDB store has no single-file copy: its snapshots are checkpoints (Store.withSnapshot)")
        }
    }

    /// Flushes to disk what `noSync` commits left in memory.
    func sync() throws {
        switch self {
        case let .lmdb(e): try e.environment.sync()
        case let .rocksdb(e): try e.sync()
        }
    }

    /// Closes what must not be left open when the process exits (`Store.shutDown`): RocksDB's
    /// DB and its background work. LMDB's environment has no threads and nothing to flush
    /// (every commit is durable) and stays open until the engine is released. Returns false
    /// when a read on another thread (`readInline`) was still inside after `wait` seconds:
    /// the DB is then left open.
    func close(wait: Double) -> Bool {
        if case let .rocksdb(e) = self { return e.close(wait: wait) }
        return true
    }
}

/// LMDB behind the seam: one environment, a named database per table.
final class LMDBEngine: Sendable {
    let environment: LMDBEnvironment
    let tables: LMDBTables

    /// Opens (creating when not `readOnly`) the environment in `directory` and its tables.
    init(directory: String, mapSize: Int, readOnly: Bool, noSync: Bool) throws {
        let environment = try LMDBEnvironment(path: directory, options: .init(mapSize: mapSize, readOnly: readOnly, noSync: noSync))
        if readOnly {
            let dbs = try environment.openExistingDatabases(["kv", "log", "meta"])
            tables = LMDBTables(kv: dbs[0], log: dbs[1], meta: dbs[2],
                                trail: try? environment.openExistingDatabases(["trail"])[0])
        } else {
            tables = try environment.write { txn in
                LMDBTables(kv: try txn.openDatabase("kv", create: true), log: try txn.openDatabase("log", create: true),
                           meta: try txn.openDatabase("meta", create: true), trail: try txn.openDatabase("trail", create: true))
            }
        }
        self.environment = environment
    }
}

/// The named databases of the store's tables in an LMDB environment.
struct LMDBTables: Sendable {
    let kv: LMDBDatabase
    let log: LMDBDatabase
    let meta: LMDBDatabase
    let trail: LMDBDatabase?

    @inline(__always)
    subscript(_ table: Table) -> LMDBDatabase {
        switch table {
        case .kv: return kv
        case .log: return log
        case .meta: return meta
        // Callers reach the trail only through `Store.trail`, nil when it is absent.
        case .trail: return trail ?? meta
        }
    }
}

/// Writes into one table of a write transaction (see `EngineTransaction.withWriter`); valid
/// only inside the `withWriter` call that made it.
struct TableWriter: ~Copyable {
    enum Kind {
        case lmdb(OpaquePointer)
        case rocksdb(RocksDBTransaction, Table)
    }

    let kind: Kind

    /// Stores `value` under `key` unless the stored value is already byte for byte `value`;
    /// returns whether it wrote. On LMDB one B-tree descent whatever the case.
    func putIfChanged(_ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) throws -> Bool {
        switch kind {
        case let .lmdb(cursor): return try LMDBTransaction.putIfChanged(cursor: cursor, key, value)
        case let .rocksdb(txn, table):
            let same = try txn.withValue(table, key) { old in
                guard let old, old.count == value.count else { return false }
                return value.count == 0 || memcmp(old.baseAddress!, value.baseAddress!, value.count) == 0
            }
            if same { return false }
            try txn.put(table, key, value)
            return true
        }
    }
}

/// A transaction of whichever engine runs, only valid inside the closure that received
/// it. Its operations are the tables' get, put, delete, cursor and count.
struct EngineTransaction: ~Copyable {
    enum Handle {
        case lmdb(OpaquePointer, LMDBTables)
        case rocksdb(RocksDBTransaction)
    }

    let handle: Handle

    /// The value stored under `key` in `table`, or nil.
    func get(_ table: Table, _ key: [UInt8]) throws -> [UInt8]? {
        switch handle {
        case let .lmdb(txn, t): return try LMDBTransaction(txn: txn).get(t[table], key)
        case let .rocksdb(txn): return try txn.get(table, key)
        }
    }

    /// Calls `body` with the bytes stored under `key`, or nil, valid only inside `body`.
    @inline(__always)
    func withValue<T>(_ table: Table, _ key: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer?) throws -> T) throws -> T {
        switch handle {
        case let .lmdb(txn, t): return try LMDBTransaction(txn: txn).withValue(t[table], key, body)
        case let .rocksdb(txn): return try txn.withValue(table, key, body)
        }
    }

    /// Stores `value` under `key`; `append` says the key sorts after every key of the table.
    func put(_ table: Table, _ key: [UInt8], _ value: [UInt8], append: Bool = false) throws {
        switch handle {
        case let .lmdb(txn, t): try LMDBTransaction(txn: txn).put(t[table], key, value, append: append)
        case let .rocksdb(txn): try txn.put(table, key, value)
        }
    }

    /// Runs `body` with a writer into `table` for a run of writes (a batch's sets): on LMDB
    /// one cursor serves them all instead of one opened and closed per write.
    func withWriter<T>(_ table: Table, _ body: (borrowing TableWriter) throws -> T) throws -> T {
        switch handle {
        case let .lmdb(txn, t):
            let cursor = try LMDBTransaction(txn: txn).writeCursor(t[table])
            defer { mdb_cursor_close(cursor) }
            return try body(TableWriter(kind: .lmdb(cursor)))
        case let .rocksdb(txn): return try body(TableWriter(kind: .rocksdb(txn, table)))
        }
    }

    /// Stores `count` bytes under `key`, written by `fill`: on LMDB straight into the space
    /// it reserves (no intermediate copy); `append` says the key sorts after every key.
    func put(_ table: Table, _ key: [UInt8], reserving count: Int, append: Bool = false,
             _ fill: (UnsafeMutableRawBufferPointer) throws -> Void) throws {
        switch handle {
        case let .lmdb(txn, t): try LMDBTransaction(txn: txn).put(t[table], key, reserving: count, append: append, fill)
        case let .rocksdb(txn):
            var bytes = [UInt8](repeating: 0, count: count)
            try bytes.withUnsafeMutableBytes { try fill($0) }
            try txn.put(table, key, bytes)
        }
    }

    /// Deletes `key`; returns false when it was absent.
    @discardableResult
    func delete(_ table: Table, _ key: [UInt8]) throws -> Bool {
        switch handle {
        case let .lmdb(txn, t): return try LMDBTransaction(txn: txn).delete(t[table], key)
        case let .rocksdb(txn): return try txn.delete(table, key)
        }
    }

    /// Calls `body` for each record with key ≥ `from` (or from the first) in key order,
    /// until it returns false.
    func forEach(_ table: Table, from: [UInt8]? = nil, _ body: (_ key: [UInt8], _ value: [UInt8]) throws -> Bool) throws {
        switch handle {
        case let .lmdb(txn, t): try LMDBTransaction(txn: txn).forEach(t[table], from: from, body)
        case let .rocksdb(txn): try txn.forEach(table, from: from, body)
        }
    }

    /// `forEach` over the engine's own bytes, uncopied: valid only inside `body`.
    func forEachInPlace(_ table: Table, from: [UInt8]? = nil,
                        _ body: (_ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) throws -> Bool) throws {
        switch handle {
        case let .lmdb(txn, t): try LMDBTransaction(txn: txn).forEachInPlace(t[table], from: from, body)
        case let .rocksdb(txn):
            try txn.forEach(table, from: from) { k, v in try k.withUnsafeBytes { k in try v.withUnsafeBytes { v in try body(k, v) } } }
        }
    }

    /// Number of records in `table`.
    func count(_ table: Table) throws -> Int {
        switch handle {
        case let .lmdb(txn, t): return try LMDBTransaction(txn: txn).count(t[table])
        case let .rocksdb(txn): return try txn.count(table)
        }
    }

    /// Deletes every record of `table`.
    func removeAll(_ table: Table) throws {
        switch handle {
        case let .lmdb(txn, t): try LMDBTransaction(txn: txn).removeAll(t[table])
        case let .rocksdb(txn): try txn.removeAll(table)
        }
    }
}
