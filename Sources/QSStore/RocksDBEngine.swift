import CRocksDB
import Foundation
import Glibc
import NIOConcurrencyHelpers
import Synchronization

/// The column families of the store's tables.
struct RocksDBFamilies {
    let kv: OpaquePointer
    let log: OpaquePointer
    let meta: OpaquePointer
    let trail: OpaquePointer

    @inline(__always)
    subscript(_ table: Table) -> OpaquePointer {
        switch table {
        case .kv: return kv
        case .log: return log
        case .meta: return meta
        case .trail: return trail
        }
    }
}

/// RocksDB behind the seam: one DB in the store's directory, a column family per table.
/// Read transactions are a snapshot and the `ReadOptions` that point at it; a write
/// transaction is a `WriteBatchWithIndex` (it reads its own writes), committed by one
/// synced write. Write transactions are serialised by `writeLock` (the store's writer
/// thread and its background trimming both write), as LMDB's writer lock does.
final class RocksDBEngine: @unchecked Sendable {
    static let familyNames = ["default", "kv", "log", "meta", "trail"]

    let db: OpaquePointer
    let families: RocksDBFamilies
    private let handles: [OpaquePointer]
    private let options: OpaquePointer
    private let tableOptions: OpaquePointer
    private let cache: OpaquePointer
    private let tuning: RocksDBOptions
    private let writeOptions: OpaquePointer
    private let writeLock = NSLock()
    /// The first failed write's error (guarded by `writeLock`). After a failed WAL write
    /// RocksDB is in an error state in which another write trips an assertion in Debian's
    /// build (and the C API of 7.8 has no `Resume`): the engine refuses every later write
    /// itself, with the same error, until the node is restarted (docs/storage.md, "Engines").
    private var failedWrite: RocksDBError?
    /// Set by `close()` (guarded by `writeLock`).
    private var closed = false
    /// Every call into the DB but a write (which `writeLock` covers) holds the gate while it
    /// runs: `close()` shuts it and waits for those inside, so a read, checkpoint or metrics
    /// scrape never meets a closed DB (it gets `StoreError.closed` instead).
    private let gate = EngineGate()
    let readOnly: Bool
    let directory: String
    /// Free bytes always kept beyond a batch's own needs: RocksDB's MANIFEST, info LOG,
    /// OPTIONS and a new WAL file when one is switched (see `checkRoom`).
    static let reservedBytes: UInt64 = 1 << 20

    /// Whether `directory` holds a RocksDB store.
    static func exists(at directory: String) -> Bool {
        FileManager.default.fileExists(atPath: directory + "/CURRENT")
    }

    /// Opens (creating when not `readOnly`) the DB in `directory` and its column families.
    /// Refused (`StoreError.closed`) once the process is exiting (`RocksDBExit`).
    init(directory: String, readOnly: Bool, noSync: Bool, options tuning: RocksDBOptions) throws {
        guard RocksDBExit.opening() else { throw StoreError.closed }
        var registered = false
        defer { if !registered { RocksDBExit.left() } }
        let cache = rocksdb_cache_create_lru(tuning.blockCacheBytes)!
        let tableOptions = rocksdb_block_based_options_create()!
        rocksdb_block_based_options_set_block_cache(tableOptions, cache)
        rocksdb_block_based_options_set_filter_policy(tableOptions, rocksdb_filterpolicy_create_bloom(10))
        rocksdb_block_based_options_set_cache_index_and_filter_blocks(tableOptions, 1)
        let options = rocksdb_options_create()!
        rocksdb_options_set_create_if_missing(options, readOnly ? 0 : 1)
        rocksdb_options_set_create_missing_column_families(options, readOnly ? 0 : 1)
        rocksdb_options_set_block_based_table_factory(options, tableOptions)
        rocksdb_options_set_write_buffer_size(options, tuning.writeBufferBytes)
        rocksdb_options_set_max_write_buffer_number(options, 2)
        rocksdb_options_set_db_write_buffer_size(options, tuning.memtableBudgetBytes)
        rocksdb_options_set_max_open_files(options, 512)
        rocksdb_options_set_compression(options, tuning.compression.code)
        let writeOptions = rocksdb_writeoptions_create()!
        rocksdb_writeoptions_set_sync(writeOptions, noSync ? 0 : 1)

        let names = Self.familyNames
        var cNames = names.map { strdup($0) }
        defer { cNames.forEach { free($0) } }
        let familyOptions = [OpaquePointer?](repeating: options, count: names.count)
        var out = [OpaquePointer?](repeating: nil, count: names.count)
        var err: UnsafeMutablePointer<CChar>?
        let opened: OpaquePointer? = cNames.withUnsafeMutableBufferPointer { namesPtr in
            namesPtr.withMemoryRebound(to: UnsafePointer<CChar>?.self) { constNames in
                familyOptions.withUnsafeBufferPointer { fo in
                    out.withUnsafeMutableBufferPointer { handles in
                        readOnly
                            ? rocksdb_open_for_read_only_column_families(options, directory, Int32(names.count), constNames.baseAddress,
                                                                         fo.baseAddress, handles.baseAddress, 0, &err)
                            : rocksdb_open_column_families(options, directory, Int32(names.count), constNames.baseAddress,
                                                           fo.baseAddress, handles.baseAddress, &err)
                    }
                }
            }
        }
        do {
            try RocksDBError.check(err, "open(\(directory))")
        } catch {
            rocksdb_writeoptions_destroy(writeOptions)
            rocksdb_options_destroy(options)
            rocksdb_block_based_options_destroy(tableOptions)
            rocksdb_cache_destroy(cache)
            throw error
        }
        guard let opened else { throw RocksDBError(operation: "open(\(directory))", message: "no handle returned") }
        let handles = out.compactMap { $0 }
        guard handles.count == names.count else { throw RocksDBError(operation: "open(\(directory))", message: "a column family handle is missing") }
        db = opened
        self.handles = handles
        self.cache = cache
        self.tableOptions = tableOptions
        self.options = options
        self.writeOptions = writeOptions
        self.readOnly = readOnly
        self.directory = directory
        self.tuning = tuning
        families = RocksDBFamilies(kv: handles[1], log: handles[2], meta: handles[3], trail: handles[4])
        registered = true
        RocksDBExit.opened(self)
    }

    /// Cancels the background work (waiting for a flush or compaction running) and closes
    /// the DB, once nothing reads or writes it any more (`Store.shutDown`). A process must not
    /// exit with the DB open: librocksdb's static destructors then meet its background
    /// threads and a store thread still in a write, and the process dies of SIGABRT
    /// ("terminate called without an active exception", "pthread lock: Invalid argument")
    /// instead of exiting 0; `RocksDBExit` closes what is still open as the process exits.
    /// Writes and reads after it fail (`StoreError.closed`). Returns whether the DB is closed:
    /// not when a read still inside after `wait` seconds (the DB is then left open).
    @discardableResult
    func close(wait: Double = 5) -> Bool {
        writeLock.lock()
        defer { writeLock.unlock() }
        guard !closed else { return true }
        guard gate.shut(waiting: wait) else { return false }
        closed = true
        rocksdb_cancel_all_background_work(db, 1)
        for h in handles { rocksdb_column_family_handle_destroy(h) }
        rocksdb_close(db)
        return true
    }

    deinit {
        // Once the exit handler is done (`RocksDBExit`), librocksdb's own state may be
        // going: the DB was closed there, and the options and cache are left to the exit, as
        // they are when the DB could not be closed.
        guard RocksDBExit.releasing(self) else { return }
        defer { RocksDBExit.left() }
        guard close() else { return }
        rocksdb_writeoptions_destroy(writeOptions)
        rocksdb_options_destroy(options)
        rocksdb_block_based_options_destroy(tableOptions)
        rocksdb_cache_destroy(cache)
    }

    /// Goes through the gate (the caller leaves it with `gate.leave()`): `StoreError.closed`
    /// once `close()` began.
    @inline(__always)
    private func enter() throws {
        guard gate.enter() else { throw StoreError.closed }
    }

    /// Runs `body` on a snapshot of the DB (every table seen at one sequence number).
    func read<T>(_ body: (RocksDBTransaction) throws -> T) throws -> T {
        try enter()
        defer { gate.leave() }
        let snapshot = rocksdb_create_snapshot(db)
        let ro = rocksdb_readoptions_create()
        rocksdb_readoptions_set_snapshot(ro, snapshot)
        defer {
            rocksdb_readoptions_destroy(ro)
            rocksdb_release_snapshot(db, snapshot)
        }
        return try body(RocksDBTransaction(db: db, families: families, readOptions: ro!, batch: nil))
    }

    /// Runs `body` with a fresh write batch, written (synced) in one atomic write when it
    /// returns; dropped when it throws.
    func write<T>(_ body: (RocksDBTransaction) throws -> T) throws -> T {
        guard !readOnly else { throw StoreError.readOnlyTransaction }
        writeLock.lock()
        defer { writeLock.unlock() }
        guard !closed else { throw StoreError.closed }
        if let failedWrite {
            throw RocksDBError(operation: failedWrite.operation,
                               message: failedWrite.message + " (earlier: this RocksDB store takes no writes until the node is restarted)")
        }
        let batch = rocksdb_writebatch_wi_create(0, 1)
        let ro = rocksdb_readoptions_create()
        defer {
            rocksdb_readoptions_destroy(ro)
            rocksdb_writebatch_wi_destroy(batch)
        }
        let result = try body(RocksDBTransaction(db: db, families: families, readOptions: ro!, batch: batch))
        // Nothing to write (a compare-and-swap that answered conflict, an identical write
        // dropped): no write, so no room check, which would answer a full disk for a batch
        // that writes nothing (a resent batch must get its conflict, not disk-full).
        guard rocksdb_writebatch_wi_count(batch) > 0 else { return result }
        try checkRoom(for: batch)
        var err: UnsafeMutablePointer<CChar>?
        rocksdb_write_writebatch_wi(db, writeOptions, batch, &err)
        do {
            try RocksDBError.check(err, "write")
        } catch let error as RocksDBError {
            failedWrite = error
            throw error
        }
        return result
    }

    /// Refuses a batch the filesystem may not have room for, before RocksDB sees it.
    /// RocksDB 7.8 as Debian builds it aborts the process on an assertion when a WAL write
    /// meets ENOSPC (`WritableFileWriter::AssertFalseAndGetStatusForPrevError`, in the
    /// failing write itself), and its C API has no `Resume`: so a RocksDB store must never
    /// hit a full disk. Room needed: the batch twice (its WAL record, then its share of a
    /// flush), every memtable flushed (at most their size in SST bytes, less compressed),
    /// and `reservedBytes`. The refusal is a `diskFull` like LMDB's ENOSPC: nothing was
    /// written, `/readyz` fails, and the next batch succeeds once there is room.
    private func checkRoom(for batch: OpaquePointer?) throws {
        guard let free = Store.freeBytes(at: directory) else { return }
        var size = 0
        _ = rocksdb_writebatch_wi_data(batch, &size)
        let need = 2 * UInt64(size) + UInt64(propertyInside("rocksdb.cur-size-all-mem-tables")) + Self.reservedBytes
        guard free < need else { return }
        throw StoreError.diskFull("a batch of \(size) bytes needs about \(need) bytes free in \(directory) (the batch twice, the memtables to flush, 1 MiB for RocksDB's own files), which has \(free); RocksDB is not given a write it may not have room for")
    }

    /// A checkpoint of the DB in `directory` (which must not exist): hard links to its
    /// SST files and copies of the rest, a consistent point in time.
    func checkpoint(into directory: String) throws {
        try enter()
        defer { gate.leave() }
        var err: UnsafeMutablePointer<CChar>?
        let cp = rocksdb_checkpoint_object_create(db, &err)
        try RocksDBError.check(err, "checkpoint_object_create")
        defer { rocksdb_checkpoint_object_destroy(cp) }
        rocksdb_checkpoint_create(cp, directory, 0, &err)
        try RocksDBError.check(err, "checkpoint_create(\(directory))")
    }

    /// Flushes the WAL to disk (after `noSync` writes).
    func sync() throws {
        try enter()
        defer { gate.leave() }
        var err: UnsafeMutablePointer<CChar>?
        rocksdb_flush_wal(db, 1, &err)
        try RocksDBError.check(err, "flush_wal")
    }

    /// Flushes every memtable (waiting for it) and compacts every table.
    func flushAndCompact() throws {
        try enter()
        defer { gate.leave() }
        let fo = rocksdb_flushoptions_create()
        defer { rocksdb_flushoptions_destroy(fo) }
        rocksdb_flushoptions_set_wait(fo, 1)
        for h in handles {
            var err: UnsafeMutablePointer<CChar>?
            rocksdb_flush_cf(db, fo, h, &err)
            try RocksDBError.check(err, "flush")
        }
        for h in handles { rocksdb_compact_range_cf(db, h, nil, 0, nil, 0) }
    }

    /// An integer property summed over the tables (0 once closed).
    func property(_ name: String) -> Int {
        guard gate.enter() else { return 0 }
        defer { gate.leave() }
        return propertyInside(name)
    }

    private func propertyInside(_ name: String) -> Int {
        var total = 0
        for h in handles {
            var v: UInt64 = 0
            if rocksdb_property_int_cf(db, h, name, &v) == 0 { total += Int(v) }
        }
        return total
    }

    /// Bytes on disk (SST files) plus the memtables.
    func usage() -> (usedBytes: Int, mapSizeBytes: Int) {
        (property("rocksdb.total-sst-files-size") + property("rocksdb.cur-size-all-mem-tables"), 0)
    }

    /// The cache, the memtables and the files, as `EngineMemory`.
    func memory() -> EngineMemory {
        var wal = 0
        if let names = try? FileManager.default.contentsOfDirectory(atPath: directory) {
            for name in names where name.hasSuffix(".log") {
                wal += ((try? FileManager.default.attributesOfItem(atPath: directory + "/" + name))?[.size] as? NSNumber)?.intValue ?? 0
            }
        }
        return EngineMemory(blockCacheBytes: Int(rocksdb_cache_get_usage(cache)), blockCacheCapacityBytes: tuning.blockCacheBytes,
                            memtableBytes: property("rocksdb.cur-size-all-mem-tables"), memtableBudgetBytes: tuning.memtableBudgetBytes,
                            tableReadersBytes: property("rocksdb.estimate-table-readers-mem"),
                            sstBytes: property("rocksdb.total-sst-files-size"), walBytes: wal)
    }
}

/// Counts the calls inside an engine and shuts them out: the low bits count those inside,
/// the top bit says shut. Two atomic operations a call, no lock on the read path.
final class EngineGate: Sendable {
    private static let shutBit = 1 << 62
    private let state = Atomic<Int>(0)

    /// Whether the caller may go in (then it must `leave()`).
    @inline(__always)
    func enter() -> Bool {
        let now = state.add(1, ordering: .acquiring).newValue
        guard now & Self.shutBit == 0 else {
            state.subtract(1, ordering: .releasing)
            return false
        }
        return true
    }

    @inline(__always)
    func leave() {
        state.subtract(1, ordering: .releasing)
    }

    /// Shuts the gate and waits (up to `seconds`) for every caller inside to leave; reopens
    /// it and answers false when one is still inside then.
    func shut(waiting seconds: Double) -> Bool {
        state.bitwiseOr(Self.shutBit, ordering: .acquiringAndReleasing)
        let deadline = DispatchTime.now().uptimeNanoseconds &+ UInt64(max(seconds, 0) * 1e9)
        while state.load(ordering: .acquiring) & ~Self.shutBit != 0 {
            guard DispatchTime.now().uptimeNanoseconds < deadline else {
                state.bitwiseAnd(~Self.shutBit, ordering: .acquiringAndReleasing)
                return false
            }
            usleep(200)
        }
        return true
    }
}

/// Closes every RocksDB engine still open as the process exits. librocksdb's static
/// destructors run at `exit` (the XCTest runner's after its last test, a tool's after
/// `main`): an engine still open then (a store never shut down, or released by a task
/// ending as the process exits) met them in its background threads, a store thread's call
/// or its own `deinit`, and the process died of SIGABRT ("pthread lock: Invalid argument")
/// instead of its exit status. The handler runs before the library's destructors (see
/// `opened`); engines released or opened after it leave the library alone.
enum RocksDBExit {
    private struct Open {
        weak var engine: RocksDBEngine?
    }

    private struct State {
        var open: [ObjectIdentifier: Open] = [:]
        /// Set as the handler begins: no open from then on.
        var exiting = false
        /// Set as the handler ends: an engine released from then on leaves the library alone.
        var done = false
        /// Engines opening, or closing and freeing themselves in their `deinit`, right now.
        var busy = 0
    }

    private static let state = NIOLockedValueBox(State())

    /// Called before an engine opens its DB: false once the process is exiting (the open is
    /// refused); when true, `opened` or `left` follows.
    static func opening() -> Bool {
        state.withLockedValue { state in
            guard !state.exiting else { return false }
            state.busy += 1
            return true
        }
    }

    /// An engine opened: closed by the exit handler if still open then. The handler is
    /// registered again after every open: librocksdb registers the destructors of its
    /// function-local statics as it first uses them (the first open does most), and exit
    /// handlers run last registered first, so the latest registration runs before them all
    /// (the others find nothing left to do).
    static func opened(_ engine: RocksDBEngine) {
        state.withLockedValue { state in
            state.open[ObjectIdentifier(engine)] = Open(engine: engine)
            state.busy -= 1
        }
        atexit { RocksDBExit.closeAll() }
    }

    /// Called by an engine's `deinit`: whether it may close and free itself (false once the
    /// exit handler is done; while it runs, it waits for the engine); when true, `left`
    /// follows once done.
    static func releasing(_ engine: RocksDBEngine) -> Bool {
        state.withLockedValue { state in
            state.open[ObjectIdentifier(engine)] = nil
            guard !state.done else { return false }
            state.busy += 1
            return true
        }
    }

    static func left() {
        state.withLockedValue { $0.busy -= 1 }
    }

    /// The exit handler (registered once per open; the first to run does the work): no
    /// engine opens from now on; those opening finish (up to two seconds), every engine still
    /// open is closed (a write in progress finishes first; a read gets up to a second), and
    /// engines closing themselves in their `deinit` meanwhile finish (up to two seconds).
    static func closeAll() {
        let first = state.withLockedValue { state -> Bool in
            defer { state.exiting = true }
            return !state.exiting
        }
        guard first else { return }
        waitForBusy(seconds: 2)
        let engines = state.withLockedValue { $0.open.values.compactMap(\.engine) }
        for engine in engines { engine.close(wait: 1) }
        waitForBusy(seconds: 2)
        state.withLockedValue { $0.done = true }
    }

    private static func waitForBusy(seconds: Double) {
        let deadline = DispatchTime.now().uptimeNanoseconds &+ UInt64(seconds * 1e9)
        while state.withLockedValue({ $0.busy }) > 0, DispatchTime.now().uptimeNanoseconds < deadline {
            usleep(200)
        }
    }
}
