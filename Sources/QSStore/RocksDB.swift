import CRocksDB
import Foundation
import Glibc

/// A RocksDB call that failed, with RocksDB's own status text and what was being done.
public struct RocksDBError: Error, Sendable, CustomStringConvertible {
    public let operation: String
    public let message: String

    /// The filesystem has no room left (RocksDB's IOError carries the errno's text).
    public var isDiskFull: Bool { message.contains("No space left on device") || message.contains("Disk quota exceeded") }
    public var isIOError: Bool { message.hasPrefix("IO error") }
    public var description: String { "RocksDB \(operation) failed: \(message)" }

    /// Throws when `err` (a RocksDB `errptr`) was set, freeing it.
    static func check(_ err: UnsafeMutablePointer<CChar>?, _ operation: @autoclosure () -> String) throws {
        guard let err else { return }
        let message = String(cString: err)
        rocksdb_free(err)
        throw RocksDBError(operation: operation(), message: message)
    }
}

/// How a RocksDB store is tuned; bounded memory first (docs/storage.md, "Engines").
public struct RocksDBOptions: Sendable, Equatable {
    /// The block cache shared by the tables (LRU), in bytes.
    public var blockCacheBytes: Int
    /// Each table's memtable size before it is flushed, in bytes. All memtables together
    /// are bounded by `memtableBudgetBytes`.
    public var writeBufferBytes: Int
    /// How SST blocks are compressed.
    public var compression: RocksDBCompression

    public init(blockCacheBytes: Int = 64 << 20, writeBufferBytes: Int = 16 << 20, compression: RocksDBCompression = .lz4) {
        self.blockCacheBytes = blockCacheBytes
        self.writeBufferBytes = writeBufferBytes
        self.compression = compression
    }

    /// The bound on all memtables together (RocksDB's `db_write_buffer_size`): four write
    /// buffers; past it the largest memtable is flushed.
    public var memtableBudgetBytes: Int { 4 * writeBufferBytes }
}

/// How a RocksDB store compresses its SST blocks (`qsnode --rocksdb-compression`). Debian's
/// librocksdb 7.8 is linked with liblz4 and libzstd; a type the library was built without
/// would make the store refuse to open ("Compression type … is not linked with the binary").
public enum RocksDBCompression: String, Sendable, CaseIterable {
    /// LZ4: fast, about half the bytes on configuration-shaped data (the default).
    case lz4
    /// Zstandard at RocksDB's default level: fewer bytes than LZ4 for more CPU per block.
    case zstd
    /// Blocks stored as they are.
    case none

    /// RocksDB's code for it (`rocksdb_*_compression` in `rocksdb/c.h`).
    var code: Int32 {
        switch self {
        case .lz4: return Int32(rocksdb_lz4_compression)
        case .zstd: return Int32(rocksdb_zstd_compression)
        case .none: return Int32(rocksdb_no_compression)
        }
    }
}

/// What a RocksDB store holds in the process's own memory (its heap, unlike LMDB's pages,
/// which are the kernel's page cache), so the node can report its own memory apart from it.
public struct EngineMemory: Sendable, Equatable {
    /// Bytes in the block cache (data blocks, indexes, filters) and its capacity.
    public var blockCacheBytes: Int
    public var blockCacheCapacityBytes: Int
    /// Bytes in memtables (not yet flushed) and their bound.
    public var memtableBytes: Int
    public var memtableBudgetBytes: Int
    /// Table readers' memory outside the cache (RocksDB's estimate).
    public var tableReadersBytes: Int
    /// Bytes of SST files and of live WAL files on disk.
    public var sstBytes: Int
    public var walBytes: Int

    /// Everything above that sits in memory.
    public var inMemoryBytes: Int { blockCacheBytes + memtableBytes + tableReadersBytes }
}

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
    init(directory: String, readOnly: Bool, noSync: Bool, options tuning: RocksDBOptions) throws {
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
    }

    deinit {
        for h in handles { rocksdb_column_family_handle_destroy(h) }
        rocksdb_close(db)
        rocksdb_writeoptions_destroy(writeOptions)
        rocksdb_options_destroy(options)
        rocksdb_block_based_options_destroy(tableOptions)
        rocksdb_cache_destroy(cache)
    }

    /// Runs `body` on a snapshot of the DB (every table seen at one sequence number).
    func read<T>(_ body: (RocksDBTransaction) throws -> T) throws -> T {
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
        let need = 2 * UInt64(size) + UInt64(property("rocksdb.cur-size-all-mem-tables")) + Self.reservedBytes
        guard free < need else { return }
        throw StoreError.diskFull("a batch of \(size) bytes needs about \(need) bytes free in \(directory) (the batch twice, the memtables to flush, 1 MiB for RocksDB's own files), which has \(free); RocksDB is not given a write it may not have room for")
    }

    /// A checkpoint of the DB in `directory` (which must not exist): hard links to its
    /// SST files and copies of the rest, a consistent point in time.
    func checkpoint(into directory: String) throws {
        var err: UnsafeMutablePointer<CChar>?
        let cp = rocksdb_checkpoint_object_create(db, &err)
        try RocksDBError.check(err, "checkpoint_object_create")
        defer { rocksdb_checkpoint_object_destroy(cp) }
        rocksdb_checkpoint_create(cp, directory, 0, &err)
        try RocksDBError.check(err, "checkpoint_create(\(directory))")
    }

    /// Flushes the WAL to disk (after `noSync` writes).
    func sync() throws {
        var err: UnsafeMutablePointer<CChar>?
        rocksdb_flush_wal(db, 1, &err)
        try RocksDBError.check(err, "flush_wal")
    }

    /// Flushes every memtable (waiting for it) and compacts every table.
    func flushAndCompact() throws {
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

    /// An integer property summed over the tables.
    func property(_ name: String) -> Int {
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
        guard let batch else { throw StoreError.readOnlyTransaction }
        key.withUnsafeBytes { k in
            value.withUnsafeBytes { v in
                rocksdb_writebatch_wi_put_cf(batch, families[table], k.baseAddress?.assumingMemoryBound(to: CChar.self), k.count,
                                             v.baseAddress?.assumingMemoryBound(to: CChar.self), v.count)
            }
        }
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

/// A RocksDB checkpoint as one stream of bytes, so that a snapshot travels as LMDB's
/// copy does (one size, one byte stream): `QSROCKS1`, then per file its name's length
/// (u16 big endian), its name, its length (u64 big endian) and its bytes; a name length of
/// 0 ends it. The receiver tells the two formats apart by the magic.
enum RocksDBCheckpointPack {
    static let magic = Array("QSROCKS1".utf8)

    /// Packs every file of `directory` into a new file at `path`.
    static func pack(directory: String, into path: String) throws {
        guard FileManager.default.createFile(atPath: path, contents: nil),
              let out = FileHandle(forWritingAtPath: path) else {
            throw StoreError.io("cannot create the snapshot file \(path)")
        }
        defer { try? out.close() }
        try out.write(contentsOf: magic)
        for name in try FileManager.default.contentsOfDirectory(atPath: directory).sorted() {
            let file = directory + "/" + name
            let size = try (FileManager.default.attributesOfItem(atPath: file)[.size] as? NSNumber)?.uint64Value ?? 0
            var header = [UInt8]()
            let n = UInt16(name.utf8.count)
            header += [UInt8(n >> 8), UInt8(n & 0xff)] + Array(name.utf8)
            for shift in stride(from: 56, through: 0, by: -8) { header.append(UInt8((size >> UInt64(shift)) & 0xff)) }
            try out.write(contentsOf: header)
            guard let input = FileHandle(forReadingAtPath: file) else { throw StoreError.io("cannot read \(file)") }
            defer { try? input.close() }
            var left = size
            while left > 0 {
                guard let chunk = try input.read(upToCount: Int(min(left, 1 << 20))), !chunk.isEmpty else {
                    throw StoreError.io("\(file) ended before its \(size) bytes")
                }
                try out.write(contentsOf: chunk)
                left -= UInt64(chunk.count)
            }
        }
        try out.write(contentsOf: [UInt8(0), 0])
        try out.synchronize()
    }

    /// Whether the file at `path` starts with the pack's magic.
    static func isPack(_ path: String) -> Bool {
        guard let h = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? h.close() }
        return (try? h.read(upToCount: magic.count)).map { Array($0) == magic } ?? false
    }

    /// Unpacks the file at `path` into `directory` (created), refusing names that would
    /// leave it.
    static func unpack(_ path: String, into directory: String) throws {
        guard let input = FileHandle(forReadingAtPath: path) else { throw StoreError.io("cannot read the snapshot file \(path)") }
        defer { try? input.close() }
        func read(_ count: Int) throws -> [UInt8] {
            guard count > 0 else { return [] }
            guard let d = try input.read(upToCount: count), d.count == count else {
                throw StoreError.corrupt("the snapshot file \(path) ends in the middle of a RocksDB checkpoint")
            }
            return Array(d)
        }
        guard try read(magic.count) == magic else { throw StoreError.corrupt("\(path) is not a RocksDB checkpoint") }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        while true {
            let n = try read(2)
            let length = Int(n[0]) << 8 | Int(n[1])
            if length == 0 { return }
            let name = String(decoding: try read(length), as: UTF8.self)
            guard !name.contains("/"), name != ".", name != ".." else {
                throw StoreError.corrupt("the snapshot names a file '\(name)' outside its directory")
            }
            var size: UInt64 = 0
            for b in try read(8) { size = size << 8 | UInt64(b) }
            let file = directory + "/" + name
            guard FileManager.default.createFile(atPath: file, contents: nil), let out = FileHandle(forWritingAtPath: file) else {
                throw StoreError.io("cannot create \(file)")
            }
            defer { try? out.close() }
            var left = size
            while left > 0 {
                let chunk = try read(Int(min(left, 1 << 20)))
                try out.write(contentsOf: chunk)
                left -= UInt64(chunk.count)
            }
            try out.synchronize()
        }
    }
}
