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
