import QSModel
import Foundation
import QSBytes

/// What a batch did.
public enum BatchOutcome: Sendable, Equatable {
    /// Applied: `logIndex` is the new entry's index, nil when every operation was an
    /// identical write and no entry was appended.
    case applied(logIndex: UInt64?, kept: Int, dropped: Int)
    /// The source's checkpoint is `current`, not the batch's expected position.
    case conflict(current: UInt64)
}

public enum StoreError: Error, Sendable, CustomStringConvertible, Equatable {
    case invalidPositions(expected: UInt64, new: UInt64)
    case invalidSourceID(String)
    case corrupt(String)
    case brokenChain(index: UInt64)
    /// A batch sent to a root that mirrors another root's log (compatible mode).
    case compatibleOnly
    /// A compatible append sent to a root that was promoted (`qsctl promote`).
    case promoted
    /// A write asked of a read transaction.
    case readOnlyTransaction
    /// The store's threads were stopped (the store is being released).
    case closed
    /// A received snapshot does not stand where its sender said it would.
    case snapshotMismatch(announced: Head, found: Head)
    /// A snapshot file could not be made, read or written (what, where and errno).
    case io(String)

    public var description: String {
        switch self {
        case let .invalidPositions(e, n):
            return "new position \(n) must be greater than expected position \(e)"
        case let .invalidSourceID(why):
            return "invalid source id: \(why)"
        case let .corrupt(why):
            return "corrupt store: \(why)"
        case let .brokenChain(i):
            return "hash chain broken at log index \(i)"
        case .compatibleOnly:
            return "this root is a compatible mirror (it has accepted compatible appends or was demoted: it mirrors another root's log entry for entry) and takes no other writes: write to the root it mirrors, or promote it with qsctl promote"
        case .promoted:
            return "this root was promoted (qsctl promote): it takes writes and mirrors no other root; stop the qsqsbridge feeding it, or demote it (qsctl demote) to mirror again"
        case .readOnlyTransaction:
            return "a write was asked of a read transaction: use store.write { } for writes"
        case .closed:
            return "the store is closed: its threads were stopped"
        case let .snapshotMismatch(announced, found):
            return "the received snapshot stands at index \(found.index) (hash \(hexString(found.hash))) but its sender announced index \(announced.index) (hash \(hexString(announced.hash))): it was not installed; request another snapshot"
        case let .io(why):
            return why
        }
    }
}

/// A node's storage: the keyspace (`kv`), the transaction log (`log`) and metadata
/// (`meta`: head, per-source checkpoints, identity) in one LMDB environment. This type and
/// `LMDBEnvironment` are the only code that touches LMDB.
///
/// The store owns its threads (docs/storage.md, "Threads"): every write transaction runs
/// on its one writer thread, in submission order; reads run on a small pool of reader
/// threads and never wait behind a write, a snapshot copy or log trimming; snapshots and
/// trimming run on a background thread of their own. Callers say
/// `try await store.write { txn in … }` / `try await store.read { txn in … }` (or a typed
/// method such as `applyBatch`) and never choose a thread; the transaction is only valid
/// inside the closure, and the LMDB handle never leaves the store.
public final class Store: Sendable {
    let environment: LMDBEnvironment
    /// The directory of the environment.
    public let directory: String
    /// Where snapshots being sent and received are staged (a scratch directory each):
    /// `directory` unless the store was opened with another (`--staging-dir`), e.g. a
    /// volume with room for a whole copy of the store.
    public let stagingDirectory: String
    public let keys: KeyEncoding
    /// The largest key LMDB takes as it is (longer keys are stored whole, see `KeyEncoding`).
    public let maxKeySize: Int
    let kv: LMDBDatabase
    let log: LMDBDatabase
    let meta: LMDBDatabase
    /// Runs every write transaction, one at a time (LMDB serialises writers anyway).
    let writer: StoreThreads
    /// Run read transactions; LMDB readers never wait for writers.
    let readers: StoreThreads
    /// Runs snapshot copies, snapshot file I/O and log trimming.
    let background: StoreThreads

    static let headKey = Array("head".utf8)
    static let identityKey = Array("node-id".utf8)
    static let formatKey = Array("format".utf8)
    static let checkpointPrefix = Array("cp/".utf8)
    static let modeKey = Array("mode".utf8)
    static let compatibleMode = Array("compatible".utf8)
    static let promotedMode = Array("promoted".utf8)
    public static let maxSourceIDBytes = 255

    /// Opens or creates the store in `directory` (created if missing), on the calling
    /// thread: it does blocking file I/O, so async code uses `Store.open` instead.
    /// `noSync` skips fsync at commit: only for bulk loads that call `sync()` at the end
    /// (benchmarks), never for a serving node. `readers` is the number of reader threads.
    public init(directory: String, mapSize: Int = 8 << 30, readOnly: Bool = false, noSync: Bool = false,
                readers: Int = 4, stagingDirectory: String? = nil) throws {
        if !readOnly {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            if let stagingDirectory, !stagingDirectory.isEmpty {
                try FileManager.default.createDirectory(atPath: stagingDirectory, withIntermediateDirectories: true)
            }
        }
        self.stagingDirectory = stagingDirectory.flatMap { $0.isEmpty ? nil : $0 } ?? directory
        environment = try LMDBEnvironment(path: directory, options: .init(mapSize: mapSize, readOnly: readOnly, noSync: noSync))
        self.directory = directory
        maxKeySize = environment.maxKeySize
        keys = KeyEncoding(maxKeySize: maxKeySize)
        if readOnly {
            let dbs = try environment.openExistingDatabases(["kv", "log", "meta"])
            (kv, log, meta) = (dbs[0], dbs[1], dbs[2])
        } else {
            (kv, log, meta) = try environment.write { txn in
                let kv = try txn.openDatabase("kv", create: true)
                let log = try txn.openDatabase("log", create: true)
                let meta = try txn.openDatabase("meta", create: true)
                if try txn.get(meta, Self.formatKey) == nil {
                    try txn.put(meta, Self.formatKey, [1])
                    var id = [UInt8](repeating: 0, count: 16)
                    for i in id.indices { id[i] = UInt8.random(in: 0...255) }
                    try txn.put(meta, Self.identityKey, Array(hexString(id).utf8))
                }
                return (kv, log, meta)
            }
        }
        writer = StoreThreads(name: "qs-store-writer", count: 1)
        self.readers = StoreThreads(name: "qs-store-reader", count: max(1, readers))
        background = StoreThreads(name: "qs-store-background", count: 1)
    }

    /// Opens or creates the store in `directory` without blocking the caller's thread.
    public static func open(directory: String, mapSize: Int = 8 << 30, readOnly: Bool = false, noSync: Bool = false,
                            readers: Int = 4, stagingDirectory: String? = nil) async throws -> Store {
        try await StoreThreads.once("qs-store-open") {
            try Store(directory: directory, mapSize: mapSize, readOnly: readOnly, noSync: noSync, readers: readers,
                      stagingDirectory: stagingDirectory)
        }
    }

    deinit {
        writer.stop()
        readers.stop()
        background.stop()
    }

    // MARK: closure-scoped transactions

    /// Runs `body` in a read transaction on one of the store's reader threads. Reads see
    /// the last committed state and never wait for a write, a snapshot or trimming.
    public func read<T: Sendable>(_ body: @escaping @Sendable (borrowing StoreTransaction) throws -> T) async throws -> T {
        try await readers.run { try self.readNow(body) }
    }

    /// Runs `body` in a write transaction on the store's writer thread, after every write
    /// submitted before it. The transaction commits (durably) when `body` returns and is
    /// rolled back when it throws.
    public func write<T: Sendable>(_ body: @escaping @Sendable (borrowing StoreTransaction) throws -> T) async throws -> T {
        try await writer.run { try self.writeNow(body) }
    }

    /// Runs `body` in a read transaction on the calling thread. This is the seam for a
    /// read path that is bounded (a few keys, no scans) and measured to be faster inline,
    /// such as the read servers' hot path on their event loop; nothing uses it by default.
    /// LMDB read transactions do not wait for writers, so the caller only pays for the
    /// read itself — keep `body` bounded.
    public func readInline<T>(_ body: (borrowing StoreTransaction) throws -> T) throws -> T {
        try readNow(body)
    }

    func readNow<T>(_ body: (borrowing StoreTransaction) throws -> T) throws -> T {
        try environment.read { txn in try body(StoreTransaction(store: self, txn: LMDBTransaction(txn: txn.txn), writable: false)) }
    }

    func writeNow<T>(_ body: (borrowing StoreTransaction) throws -> T) throws -> T {
        try environment.write { txn in try body(StoreTransaction(store: self, txn: LMDBTransaction(txn: txn.txn), writable: true)) }
    }

    /// Write jobs queued behind the one running (for tests and metrics).
    public var queuedWrites: Int { writer.queued }

    // MARK: encoding helpers

    func readHead(_ txn: borrowing LMDBTransaction) throws -> Head {
        guard let raw = try txn.get(meta, Self.headKey) else { return .empty }
        var r = ByteReader(raw)
        do {
            let index = try r.readU64()
            let hash = try r.readBytes(32)
            let time = try r.readU64()
            return Head(index: index, hash: hash, commitTimeNs: time)
        } catch {
            throw StoreError.corrupt("head record: \(error)")
        }
    }

    func writeHead(_ head: Head, _ txn: borrowing LMDBTransaction) throws {
        try txn.put(meta, Self.headKey, head.encoded())
    }

    static func validate(sourceID: String) throws {
        let n = sourceID.utf8.count
        guard n > 0 else { throw StoreError.invalidSourceID("empty") }
        guard n <= maxSourceIDBytes else { throw StoreError.invalidSourceID("\(n) bytes, the limit is \(maxSourceIDBytes)") }
    }

    static func encodeU64(_ v: UInt64) -> [UInt8] {
        var w = ByteWriter(capacity: 8)
        w.writeU64(v)
        return w.bytes
    }

    static func decodeU64(_ b: [UInt8], _ what: String) throws -> UInt64 {
        guard b.count == 8 else { throw StoreError.corrupt("\(what) is \(b.count) bytes, expected 8") }
        var r = ByteReader(b)
        return try r.readU64()
    }
}
