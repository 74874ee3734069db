import CLMDB
import Foundation
import Glibc

/// An LMDB return code turned into a Swift error, with LMDB's own message and what was
/// being done.
public struct LMDBError: Error, Sendable, CustomStringConvertible {
    public let code: Int32
    public let operation: String

    public var message: String { String(cString: mdb_strerror(code)) }
    public var isMapFull: Bool { code == MDB_MAP_FULL }
    /// The filesystem has no room left (LMDB passes `errno` through).
    public var isDiskFull: Bool { code == ENOSPC || code == EDQUOT }
    public var description: String { "LMDB \(operation) failed: \(message) (code \(code))" }

    static func check(_ rc: Int32, _ operation: @autoclosure () -> String) throws {
        if rc != MDB_SUCCESS { throw LMDBError(code: rc, operation: operation()) }
    }
}

/// A named database inside an environment (an `MDB_dbi`), opened once at start-up.
public struct LMDBDatabase: Sendable {
    let dbi: MDB_dbi
}

/// An LMDB environment. The C handle never escapes: work happens in closure-scoped
/// transactions that commit on return and abort on throw. LMDB environments are safe to
/// use from any thread (opened with `MDB_NOTLS`, so read transactions are not tied to
/// threads); LMDB serialises write transactions itself. Transactions run on the calling
/// thread: a node reaches LMDB only through `Store`, which runs them on threads of its
/// own; this type stays public for the write benchmark's raw-LMDB reference.
public final class LMDBEnvironment: @unchecked Sendable {
    private let env: OpaquePointer
    public let path: String

    public struct Options: Sendable {
        public var mapSize: Int
        public var maxDatabases: UInt32
        public var maxReaders: UInt32
        public var readOnly: Bool
        /// Skip the fsync at commit. Only for benchmarks' comparisons: never for a node.
        public var noSync: Bool

        public init(mapSize: Int = 8 << 30, maxDatabases: UInt32 = 8, maxReaders: UInt32 = 256,
                    readOnly: Bool = false, noSync: Bool = false) {
            self.mapSize = mapSize
            self.maxDatabases = maxDatabases
            self.maxReaders = maxReaders
            self.readOnly = readOnly
            self.noSync = noSync
        }
    }

    /// Free bytes a new environment's files need before LMDB is let to create them.
    static let roomToCreate: UInt64 = 1 << 20

    /// Opens (creating if needed) the environment in directory `path`.
    public init(path: String, options: Options = .init()) throws {
        var handle: OpaquePointer?
        try LMDBError.check(mdb_env_create(&handle), "mdb_env_create")
        guard let handle else { throw LMDBError(code: EINVAL_CODE, operation: "mdb_env_create") }
        do {
            try LMDBError.check(mdb_env_set_mapsize(handle, options.mapSize), "mdb_env_set_mapsize(\(options.mapSize))")
            try LMDBError.check(mdb_env_set_maxdbs(handle, MDB_dbi(options.maxDatabases)), "mdb_env_set_maxdbs")
            try LMDBError.check(mdb_env_set_maxreaders(handle, options.maxReaders), "mdb_env_set_maxreaders")
            var flags = UInt32(MDB_NOTLS)
            if options.readOnly { flags |= UInt32(MDB_RDONLY) }
            if options.noSync { flags |= UInt32(MDB_NOSYNC) }
            // LMDB writes a new lock file through a shared mapping, read-only opens too (a
            // received snapshot's check, `qsnode check`): with no room for its pages the
            // write is a SIGBUS, not an error (a replica started on a full disk crashed
            // so). Refused here instead, as a full disk.
            if !FileManager.default.fileExists(atPath: path + "/lock.mdb") {
                var fs = statvfs()
                if statvfs(path, &fs) == 0, UInt64(fs.f_bavail) * UInt64(fs.f_frsize) < Self.roomToCreate {
                    throw LMDBError(code: ENOSPC, operation: "mdb_env_open(\(path)): creating its lock file (less than \(Self.roomToCreate >> 20) MiB free)")
                }
            }
            try LMDBError.check(mdb_env_open(handle, path, flags, 0o644), "mdb_env_open(\(path))")
            try Self.checkFileLength(handle, path: path)
        } catch {
            mdb_env_close(handle)
            throw error
        }
        env = handle
        self.path = path
    }

    deinit { mdb_env_close(env) }

    /// Before any page is touched: the data file must hold every page its newest meta page
    /// says is in use (the meta pages themselves are read with `pread` by `mdb_env_open`).
    /// A shorter file — truncated by a full disk, a bad copy or an operator — would crash
    /// the process with SIGBUS at the first read of a missing page.
    static func checkFileLength(_ env: OpaquePointer, path: String) throws {
        var info = MDB_envinfo()
        var dbStat = MDB_stat()
        try LMDBError.check(mdb_env_info(env, &info), "mdb_env_info")
        try LMDBError.check(mdb_env_stat(env, &dbStat), "mdb_env_stat")
        let pageSize = Int(dbStat.ms_psize)
        let needed = (Int(info.me_last_pgno) + 1) * pageSize
        let file = path + "/data.mdb"
        let fd = open(file, O_RDONLY)
        guard fd >= 0 else { throw StoreError.io("cannot open \(file): errno \(errno)") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw StoreError.io("cannot stat \(file): errno \(errno)") }
        guard Int(st.st_size) >= needed else {
            throw StoreError.corrupt("\(file) is \(st.st_size) bytes but its environment uses \(needed) bytes (\(Int(info.me_last_pgno) + 1) pages of \(pageSize)): the file was truncated (a full disk, an interrupted copy?). It was not opened. Restore it from a copy; on a replica, move the directory aside and start again (it bootstraps from its upstream)")
        }
    }

    /// The map's size and the bytes in use in it (every page up to the last one used; freed
    /// pages inside are reused before the map grows). Reads the meta page: no transaction.
    public func usage() -> (usedBytes: Int, mapSizeBytes: Int) {
        var info = MDB_envinfo()
        var stat = MDB_stat()
        guard mdb_env_info(env, &info) == 0, mdb_env_stat(env, &stat) == 0 else { return (0, 0) }
        return ((Int(info.me_last_pgno) + 1) * Int(stat.ms_psize), info.me_mapsize)
    }

    /// The environment's page size in bytes.
    public var pageSize: Int {
        var stat = MDB_stat()
        guard mdb_env_stat(env, &stat) == 0 else { return Int(getpagesize()) }
        return Int(stat.ms_psize)
    }

    /// The largest key LMDB accepts in this build (511 in Debian's liblmdb).
    public var maxKeySize: Int { Int(mdb_env_get_maxkeysize(env)) }

    /// Opens (creating when `create`) a named database. Call before concurrent use.
    public func openDatabase(_ name: String, create: Bool = true) throws -> LMDBDatabase {
        try write { txn in try txn.openDatabase(name, create: create) }
    }

    /// Opens existing named databases in a read-only environment. The handles must come
    /// from a committed transaction (an aborted one closes them), hence this helper.
    public func openExistingDatabases(_ names: [String]) throws -> [LMDBDatabase] {
        var txn: OpaquePointer?
        try LMDBError.check(mdb_txn_begin(env, nil, UInt32(MDB_RDONLY), &txn), "mdb_txn_begin(open)")
        guard let txn else { throw LMDBError(code: EINVAL_CODE, operation: "mdb_txn_begin") }
        do {
            let t = LMDBTransaction(txn: txn)
            let dbs = try names.map { try t.openDatabase($0, create: false) }
            try LMDBError.check(mdb_txn_commit(txn), "mdb_txn_commit(open)")
            return dbs
        } catch {
            mdb_txn_abort(txn)
            throw error
        }
    }

    /// Runs `body` in a read-only transaction.
    public func read<T>(_ body: (borrowing LMDBTransaction) throws -> T) throws -> T {
        var txn: OpaquePointer?
        try LMDBError.check(mdb_txn_begin(env, nil, UInt32(MDB_RDONLY), &txn), "mdb_txn_begin(read)")
        guard let txn else { throw LMDBError(code: EINVAL_CODE, operation: "mdb_txn_begin") }
        defer { mdb_txn_abort(txn) }
        return try body(LMDBTransaction(txn: txn))
    }

    /// Runs `body` in a read-only transaction kept in `slot` between calls: renewed
    /// (`mdb_txn_renew`: the newest committed state, the same reader-table slot and
    /// allocation) when `slot` holds one, begun otherwise, and reset (`mdb_txn_reset`) when
    /// `body` returns, so between calls it pins no pages. One thread at a time per `slot`.
    func read<T>(reusing slot: inout OpaquePointer?, _ body: (borrowing LMDBTransaction) throws -> T) throws -> T {
        var txn: OpaquePointer
        if let kept = slot, mdb_txn_renew(kept) == MDB_SUCCESS {
            txn = kept
        } else {
            if let kept = slot { mdb_txn_abort(kept) }
            slot = nil
            var fresh: OpaquePointer?
            try LMDBError.check(mdb_txn_begin(env, nil, UInt32(MDB_RDONLY), &fresh), "mdb_txn_begin(read)")
            guard let fresh else { throw LMDBError(code: EINVAL_CODE, operation: "mdb_txn_begin") }
            txn = fresh
        }
        defer {
            mdb_txn_reset(txn)
            slot = txn
        }
        return try body(LMDBTransaction(txn: txn))
    }

    /// Runs `body` in a write transaction, committed (durably, unless `noSync`) when it
    /// returns and aborted when it throws.
    public func write<T>(_ body: (borrowing LMDBTransaction) throws -> T) throws -> T {
        var txn: OpaquePointer?
        try LMDBError.check(mdb_txn_begin(env, nil, 0, &txn), "mdb_txn_begin(write)")
        guard let txn else { throw LMDBError(code: EINVAL_CODE, operation: "mdb_txn_begin") }
        let result: T
        do {
            result = try body(LMDBTransaction(txn: txn))
        } catch {
            mdb_txn_abort(txn)
            throw error
        }
        try LMDBError.check(mdb_txn_commit(txn), "mdb_txn_commit")
        return result
    }

    /// Writes a consistent copy of the environment to an open file descriptor
    /// (`mdb_env_copyfd2`, compacting), for snapshots.
    public func copy(toFileDescriptor fd: Int32, compact: Bool = true) throws {
        try LMDBError.check(mdb_env_copyfd2(env, fd, compact ? UInt32(MDB_CP_COMPACT) : 0), "mdb_env_copyfd2")
    }

    /// Forces a flush to disk (used by benchmarks' `noSync` loops to be fair).
    public func sync() throws {
        try LMDBError.check(mdb_env_sync(env, 1), "mdb_env_sync")
    }
}

private let EINVAL_CODE: Int32 = 22

/// A transaction, only valid inside the closure that received it.
public struct LMDBTransaction: ~Copyable {
    let txn: OpaquePointer

    func openDatabase(_ name: String, create: Bool) throws -> LMDBDatabase {
        var dbi: MDB_dbi = 0
        try LMDBError.check(mdb_dbi_open(txn, name, create ? UInt32(MDB_CREATE) : 0, &dbi), "mdb_dbi_open(\(name))")
        return LMDBDatabase(dbi: dbi)
    }

    /// The value stored under `key`, or nil.
    public func get(_ db: LMDBDatabase, _ key: [UInt8]) throws -> [UInt8]? {
        try key.withUnsafeBytes { kp in
            var k = MDB_val(mv_size: kp.count, mv_data: UnsafeMutableRawPointer(mutating: kp.baseAddress))
            var v = MDB_val()
            let rc = mdb_get(txn, db.dbi, &k, &v)
            if rc == MDB_NOTFOUND { return nil }
            try LMDBError.check(rc, "mdb_get")
            return copyBytes(v)
        }
    }

    /// Calls `body` with the bytes stored under `key`, or nil: LMDB's own (mapped) memory,
    /// valid only inside `body`, so nothing is copied.
    public func withValue<T>(_ db: LMDBDatabase, _ key: UnsafeRawBufferPointer,
                             _ body: (UnsafeRawBufferPointer?) throws -> T) throws -> T {
        var k = MDB_val(mv_size: key.count, mv_data: UnsafeMutableRawPointer(mutating: key.baseAddress))
        var v = MDB_val()
        let rc = mdb_get(txn, db.dbi, &k, &v)
        if rc == MDB_NOTFOUND { return try body(nil) }
        try LMDBError.check(rc, "mdb_get")
        return try body(UnsafeRawBufferPointer(start: v.mv_data, count: v.mv_size))
    }

    public func put(_ db: LMDBDatabase, _ key: [UInt8], _ value: [UInt8], append: Bool = false) throws {
        try key.withUnsafeBytes { kp in
            try value.withUnsafeBytes { vp in
                var k = MDB_val(mv_size: kp.count, mv_data: UnsafeMutableRawPointer(mutating: kp.baseAddress))
                var v = MDB_val(mv_size: vp.count, mv_data: UnsafeMutableRawPointer(mutating: vp.baseAddress))
                try LMDBError.check(mdb_put(txn, db.dbi, &k, &v, append ? UInt32(MDB_APPEND) : 0), "mdb_put")
            }
        }
    }

    /// A cursor on `db` for a run of writes in this (write) transaction, e.g. a batch's sets
    /// through `putIfChanged`: LMDB frees it when the transaction commits or aborts, so it
    /// must not be used (or closed) after that. Other writes to `db` meanwhile are fine: LMDB
    /// keeps its cursors right across them.
    public func writeCursor(_ db: LMDBDatabase) throws -> OpaquePointer {
        var cursor: OpaquePointer?
        try LMDBError.check(mdb_cursor_open(txn, db.dbi, &cursor), "mdb_cursor_open")
        guard let cursor else { throw LMDBError(code: MDB_PANIC, operation: "mdb_cursor_open returned no cursor") }
        return cursor
    }

    /// Stores `value` under `key` through `cursor` (from `writeCursor`) unless the stored
    /// value is already byte for byte `value`; returns whether it wrote. One B-tree descent
    /// whatever the case: the insert is tried with `MDB_NOOVERWRITE`, which on an existing
    /// key leaves the cursor there with the stored value, so a different value replaces it
    /// in place (`MDB_CURRENT`). Not for `MDB_DUPSORT` databases.
    public static func putIfChanged(cursor: OpaquePointer, _ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) throws -> Bool {
        var k = MDB_val(mv_size: key.count, mv_data: UnsafeMutableRawPointer(mutating: key.baseAddress))
        var v = MDB_val(mv_size: value.count, mv_data: UnsafeMutableRawPointer(mutating: value.baseAddress))
        let rc = mdb_cursor_put(cursor, &k, &v, UInt32(MDB_NOOVERWRITE))
        if rc == 0 { return true }
        guard rc == MDB_KEYEXIST else { try LMDBError.check(rc, "mdb_cursor_put"); return true }
        // `v` is now the stored value.
        if v.mv_size == value.count, value.count == 0 || value.baseAddress.map({ memcmp(v.mv_data, $0, value.count) == 0 }) == true {
            return false
        }
        v = MDB_val(mv_size: value.count, mv_data: UnsafeMutableRawPointer(mutating: value.baseAddress))
        try LMDBError.check(mdb_cursor_put(cursor, &k, &v, UInt32(MDB_CURRENT)), "mdb_cursor_put(current)")
        return true
    }

    /// Stores `count` bytes under `key`, written in place by `fill` into the space LMDB
    /// reserves for them (`MDB_RESERVE`): no intermediate copy of a large value.
    public func put(_ db: LMDBDatabase, _ key: [UInt8], reserving count: Int, append: Bool = false,
                    _ fill: (UnsafeMutableRawBufferPointer) throws -> Void) throws {
        try key.withUnsafeBytes { kp in
            var k = MDB_val(mv_size: kp.count, mv_data: UnsafeMutableRawPointer(mutating: kp.baseAddress))
            var v = MDB_val(mv_size: count, mv_data: nil)
            let flags = UInt32(MDB_RESERVE) | (append ? UInt32(MDB_APPEND) : 0)
            try LMDBError.check(mdb_put(txn, db.dbi, &k, &v, flags), "mdb_put(reserve)")
            try fill(UnsafeMutableRawBufferPointer(start: v.mv_data, count: count))
        }
    }

    /// Deletes `key`; returns false when it was absent.
    @discardableResult
    public func delete(_ db: LMDBDatabase, _ key: [UInt8]) throws -> Bool {
        try key.withUnsafeBytes { kp in
            var k = MDB_val(mv_size: kp.count, mv_data: UnsafeMutableRawPointer(mutating: kp.baseAddress))
            let rc = mdb_del(txn, db.dbi, &k, nil)
            if rc == MDB_NOTFOUND { return false }
            try LMDBError.check(rc, "mdb_del")
            return true
        }
    }

    /// Calls `body` for each record with key ≥ `from` (or from the first record) in key
    /// order, until it returns false. The cursor cannot outlive this call.
    public func forEach(_ db: LMDBDatabase, from: [UInt8]? = nil,
                        _ body: (_ key: [UInt8], _ value: [UInt8]) throws -> Bool) throws {
        try forEachInPlace(db, from: from) { k, v in try body(Array(k), Array(v)) }
    }

    /// `forEach` over the bytes in the map, uncopied: valid only inside `body`.
    public func forEachInPlace(_ db: LMDBDatabase, from: [UInt8]? = nil,
                               _ body: (_ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) throws -> Bool) throws {
        var cursor: OpaquePointer?
        try LMDBError.check(mdb_cursor_open(txn, db.dbi, &cursor), "mdb_cursor_open")
        defer { mdb_cursor_close(cursor) }
        var k = MDB_val()
        var v = MDB_val()
        var rc: Int32
        if let from {
            rc = from.withUnsafeBytes { fp in
                k = MDB_val(mv_size: fp.count, mv_data: UnsafeMutableRawPointer(mutating: fp.baseAddress))
                return mdb_cursor_get(cursor, &k, &v, MDB_SET_RANGE)
            }
        } else {
            rc = mdb_cursor_get(cursor, &k, &v, MDB_FIRST)
        }
        while rc == MDB_SUCCESS {
            if try !body(UnsafeRawBufferPointer(start: k.mv_data, count: k.mv_size),
                         UnsafeRawBufferPointer(start: v.mv_data, count: v.mv_size)) { return }
            rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT)
        }
        if rc != MDB_NOTFOUND { try LMDBError.check(rc, "mdb_cursor_get") }
    }

    /// The last record of a database (used for the log's tail), or nil when empty.
    public func last(_ db: LMDBDatabase) throws -> (key: [UInt8], value: [UInt8])? {
        var cursor: OpaquePointer?
        try LMDBError.check(mdb_cursor_open(txn, db.dbi, &cursor), "mdb_cursor_open")
        defer { mdb_cursor_close(cursor) }
        var k = MDB_val()
        var v = MDB_val()
        let rc = mdb_cursor_get(cursor, &k, &v, MDB_LAST)
        if rc == MDB_NOTFOUND { return nil }
        try LMDBError.check(rc, "mdb_cursor_get(last)")
        return (copyBytes(k), copyBytes(v))
    }

    /// Number of records in a database.
    public func count(_ db: LMDBDatabase) throws -> Int {
        var stat = MDB_stat()
        try LMDBError.check(mdb_stat(txn, db.dbi, &stat), "mdb_stat")
        return Int(stat.ms_entries)
    }
}

private func copyBytes(_ v: MDB_val) -> [UInt8] {
    guard v.mv_size > 0, let p = v.mv_data else { return [] }
    return Array(UnsafeRawBufferPointer(start: p, count: v.mv_size))
}

extension LMDBTransaction {
    /// Deletes every record of a database (`mdb_drop` with del = 0).
    public func removeAll(_ db: LMDBDatabase) throws {
        try LMDBError.check(mdb_drop(txn, db.dbi, 0), "mdb_drop")
    }
}
