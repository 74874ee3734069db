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

/// What a batch of conditional writes did.
public enum WritesOutcome: Sendable, Equatable {
    /// Applied: the new entry's index (nil when nothing changed) and each write's outcome.
    case written(logIndex: UInt64?, outcomes: [ConditionalWrite.Outcome])
    /// The source's checkpoint is `current`, not the batch's expected position.
    case conflict(current: UInt64)
}

public enum StoreError: Error, Sendable, CustomStringConvertible, Equatable {
    case invalidPositions(expected: UInt64, new: UInt64)
    case invalidSourceID(String)
    /// A source descriptor the root does not keep (`SourceDescriptor.problem`).
    case invalidDescriptor(String)
    /// A source's descriptor replaced while its initial copy is unfinished.
    case copyUnfinished(sourceID: String)
    case corrupt(String)
    case brokenChain(index: UInt64)
    /// A batch sent to a root that mirrors another root's log (compatible mode).
    case compatibleOnly
    /// A compatible append sent to a root that was promoted (`qsctl promote`).
    case promoted
    /// A write asked of a read transaction.
    case readOnlyTransaction
    /// The store's threads were stopped (the store is being released), or it was closed.
    case closed
    /// `Store.shutDown` found a thread of the store still busy after `seconds`.
    case closeTimedOut(seconds: Double, busy: String)
    /// A received snapshot does not stand where its sender said it would.
    case snapshotMismatch(announced: Head, found: Head)
    /// A snapshot file could not be made, read or written (what, where and errno).
    case io(String)
    /// The filesystem has no room left (ENOSPC): what could not be written.
    case diskFull(String)
    /// A record fails its checksum or does not decode: the store is damaged there.
    case corruptRecord(storedKey: [UInt8], reason: String)
    /// A received snapshot's history does not contain this store's head: installing it
    /// would replace this store's history with another one.
    case snapshotDiverged(mine: Head, theirs: [UInt8]?)
    /// The store was written in a format this build does not read.
    case unsupportedFormat(found: Int, readable: ClosedRange<Int>)
    /// The directory holds a store of another engine than the one asked for.
    case wrongEngine(directory: String, found: String, asked: String)

    public var description: String {
        switch self {
        case let .invalidPositions(e, n):
            return "new position \(n) must be greater than expected position \(e)"
        case let .invalidSourceID(why):
            return "invalid source id: \(why)"
        case let .invalidDescriptor(why):
            return "invalid source descriptor: \(why)"
        case let .copyUnfinished(sourceID):
            return "source id \(sourceID)'s initial copy is unfinished (its cursor is at the root), and what it copied so far is under the recorded mapping: finish the copy with the mapping it started with, then change it"
        case let .corrupt(why):
            return "corrupt store: \(why)"
        case let .brokenChain(i):
            return "hash chain broken at log index \(i)"
        case .compatibleOnly:
            return "this root is a compatible mirror (it has accepted compatible appends or was demoted: it mirrors another root's log entry for entry) and takes no other writes: write to the root it mirrors (after a cut-over, the root it was cut over to); to give this one the writes, run qsctl cutover --from THAT_ROOT --to THIS_ROOT"
        case .promoted:
            return "this root was promoted (qsctl promote): it takes writes and mirrors no other root; stop the qsqsbridge feeding it (if this root took the writes in a cut-over, feed the old root from it instead: docs/runbook.md, section 6); demote it (qsctl demote) only if it should mirror again and takes no writes anyone needs"
        case .readOnlyTransaction:
            return "a write was asked of a read transaction: use store.write { } for writes"
        case .closed:
            return "the store is closed: its threads were stopped"
        case let .closeTimedOut(seconds, busy):
            return String(format: "the store could not be closed: %@ was still busy after %.0f s; it is left open", busy, seconds)
        case let .snapshotMismatch(announced, found):
            return "the received snapshot stands at index \(found.index) (hash \(hexString(found.hash))) but its sender announced index \(announced.index) (hash \(hexString(announced.hash))): it was not installed; request another snapshot"
        case let .io(why):
            return why
        case let .diskFull(what):
            return "disk full: \(what); free space on that filesystem (the node carries on by itself once there is room)"
        case let .corruptRecord(storedKey, reason):
            return "damaged record for key \(Store.describeStoredKey(storedKey)): \(reason); this node does not serve it: a replica repairs itself from its upstream, a root must be restored (qsnode check --data DIR lists every damaged record)"
        case let .snapshotDiverged(mine, theirs):
            let found = theirs.map { "hash \(hexString($0))" } ?? "no hash (it does not know that index)"
            return "the snapshot's history does not contain this store's head: index \(mine.index) has hash \(hexString(mine.hash)) here and \(found) there; it was not installed (replacing this store's history takes an operator's qsctl rebootstrap)"
        case let .wrongEngine(directory, found, asked):
            return "\(directory) holds a \(found) store but \(asked) was asked for (--engine): an existing store is opened with the engine that wrote it; leave --engine out or set it to \(found), or move to \(asked) with a new replica (docs/storage.md, \"Engines\")"
        case let .unsupportedFormat(found, readable):
            return "the store is in format \(found) and this build reads formats \(readable.lowerBound) to \(readable.upperBound): it was written by a newer qsnode; run that version (or restore a copy made by this one)"
        }
    }
}

/// A node's storage: the keyspace (`kv`), the transaction log (`log`) and metadata
/// (`meta`: head, per-source checkpoints, identity) in one LMDB environment or one RocksDB
/// database (`Engine`, docs/storage.md "Engines"); nothing outside this module knows which.
///
/// The store owns its threads (docs/storage.md, "Threads"): every write transaction runs
/// on its one writer thread, in submission order; reads run on a small pool of reader
/// threads and never wait behind a write, a snapshot copy or log trimming; snapshots and
/// trimming run on a background thread of their own. Callers say
/// `try await store.write { txn in … }` / `try await store.read { txn in … }` (or a typed
/// method such as `applyBatch`) and never choose a thread; the transaction is only valid
/// inside the closure, and the LMDB handle never leaves the store.
public final class Store: Sendable {
    /// The engine holding the tables (docs/storage.md, "Engines"); nothing outside
    /// `QSStore` knows which one runs.
    let engine: Engine
    /// The directory of the environment.
    public let directory: String
    /// Where snapshots being sent and received are staged (a scratch directory each):
    /// `directory` unless the store was opened with another (`--staging-dir`), e.g. a
    /// volume with room for a whole copy of the store.
    public let stagingDirectory: String
    public let keys: KeyEncoding
    /// The largest key LMDB takes as it is (longer keys are stored whole, see `KeyEncoding`).
    public let maxKeySize: Int
    let kv = Table.kv
    let log = Table.log
    let meta = Table.meta
    /// Index → chained hash of log entries trimmed away (at most `trailLimit`), so that a
    /// replica far behind can still prove a snapshot continues its history; nil in a
    /// read-only format 1 store opened without one.
    let trail: Table?
    /// The store's format (`meta/format`): 2 once every record carries its checksum.
    public let format: Int
    /// Whether records without a checksum are refused (format 2).
    let requireChecksums: Bool
    /// What the store found damaged (records, log entries) and who is told.
    public let integrity = StoreIntegrity()
    /// Runs every write transaction, one at a time (LMDB serialises writers anyway).
    let writer: StoreThreads
    /// Run read transactions; LMDB readers never wait for writers.
    let readers: StoreThreads
    /// Runs snapshot copies, snapshot file I/O and log trimming.
    let background: StoreThreads
    /// Whether the last write transaction could be committed, and if not, which kind of
    /// failure stops writes (disk full, map full, I/O error): what `/readyz` reads.
    public let writeHealth = WriteHealth()

    static let headKey = Array("head".utf8)
    static let identityKey = Array("node-id".utf8)
    static let formatKey = Array("format".utf8)
    static let checkpointPrefix = Array("cp/".utf8)
    /// `cc/<sourceID>`: an unfinished initial copy's cursor (`Request.Batch.copyCursor`).
    static let copyCursorPrefix = Array("cc/".utf8)
    /// `sd/<sourceID>`: the source's descriptor (`SourceDescriptor`), as its last version-3
    /// log entry recorded it.
    static let descriptorPrefix = Array("sd/".utf8)
    static let modeKey = Array("mode".utf8)
    /// `ms`: the roots compatible bridges said they read into this store, newline-separated,
    /// newest last (`StoreTransaction.mirrorSourcesSeen`).
    static let mirrorSourcesKey = Array("ms".utf8)
    static let compatibleMode = Array("compatible".utf8)
    static let promotedMode = Array("promoted".utf8)
    public static let maxSourceIDBytes = Origin.maxSourceIDBytes
    /// The engine of a new store opened without naming one: `QS_STORE_ENGINE` when set
    /// (`lmdb` or `rocksdb`: how the test suites run against each engine), else LMDB.
    public static let defaultEngine: EngineKind = {
        guard let name = ProcessInfo.processInfo.environment["QS_STORE_ENGINE"], !name.isEmpty else { return .lmdb }
        guard let kind = EngineKind(rawValue: name) else {
            preconditionFailure("QS_STORE_ENGINE is '\(name)': set it to lmdb or rocksdb, or unset it")
        }
        return kind
    }()
    /// The engine this store runs on.
    public var engineKind: EngineKind { engine.kind }
    /// The format this build writes; it reads 1 (upgraded when opened read-write) and 2.
    public static let currentFormat = 2
    /// Chained hashes of trimmed entries kept in `trail`.
    public static let trailLimit: UInt64 = 10_000_000
    /// Log entries whose chain is checked when the store opens.
    public static let tailCheckedAtOpen = 1000

    /// Opens or creates the store in `directory` (created if missing), on the calling
    /// thread: it does blocking file I/O, so async code uses `Store.open` instead.
    /// `noSync` skips fsync at commit: only for bulk loads that call `sync()` at the end
    /// (benchmarks), never for a serving node. `readers` is the number of reader threads.
    /// `engine` is the engine of a new store (nil: `Store.defaultEngine`); an existing store
    /// is opened with the engine that wrote it, and naming the other one is refused.
    /// `chainCheckedAt`: the head at which this process checks the whole hash chain of this
    /// very file itself (a snapshot just received, `Store.receiveChecked`; an empty
    /// replica's bootstrap, `Store.bootstrapEmpty`, checked before it was moved into the
    /// data directory whose lock the node holds): the open's check of the newest entries
    /// is skipped when the store stands at that head, and runs as always otherwise.
    /// Creates `path` and its parents where missing; throws `io` naming `what` and the
    /// system's reason (a parent that is not a directory, a read-only or special filesystem).
    static func makeDirectory(_ path: String, what: String) throws {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else { throw StoreError.io("\(what) \(path) is a file, not a directory: give a directory") }
            return
        }
        var missing = [String]()
        var p = path
        while !p.isEmpty, p != "/", !FileManager.default.fileExists(atPath: p) {
            missing.append(p)
            p = (p as NSString).deletingLastPathComponent
        }
        for dir in missing.reversed() where mkdir(dir, 0o755) != 0 && errno != EEXIST {
            let reason = String(cString: strerror(errno))
            throw StoreError.io("\(what) \(path) cannot be created (mkdir \(dir): \(reason)): give a directory on a writable filesystem")
        }
    }

    public init(directory: String, mapSize: Int = 8 << 30, readOnly: Bool = false, noSync: Bool = false,
                readers: Int = 4, stagingDirectory: String? = nil, engine kind: EngineKind? = nil,
                rocksDB: RocksDBOptions = .init(), chainCheckedAt: Head? = nil) throws {
        if !readOnly {
            try Self.makeDirectory(directory, what: "the data directory")
            if let stagingDirectory, !stagingDirectory.isEmpty {
                try Self.makeDirectory(stagingDirectory, what: "the staging directory")
            }
        }
        self.stagingDirectory = stagingDirectory.flatMap { $0.isEmpty ? nil : $0 } ?? directory
        let found = EngineKind.found(in: directory)
        if let kind, let found, kind != found {
            throw StoreError.wrongEngine(directory: directory, found: found.rawValue, asked: kind.rawValue)
        }
        switch found ?? kind ?? Self.defaultEngine {
        case .lmdb: engine = .lmdb(try LMDBEngine(directory: directory, mapSize: mapSize, readOnly: readOnly, noSync: noSync))
        case .rocksdb: engine = .rocksdb(try RocksDBEngine(directory: directory, readOnly: readOnly, noSync: noSync, options: rocksDB))
        }
        self.directory = directory
        maxKeySize = engine.maxKeySize
        keys = KeyEncoding(maxKeySize: maxKeySize)
        trail = engine.hasTrail ? .trail : nil
        var format: Int
        if readOnly {
            format = try engine.read { txn in try Self.decodeFormat(txn.get(.meta, Self.formatKey)) }
        } else {
            format = try engine.write { txn in
                if try txn.get(.meta, Self.formatKey) == nil {
                    try txn.put(.meta, Self.formatKey, [UInt8(Self.currentFormat)])
                    var id = [UInt8](repeating: 0, count: 16)
                    for i in id.indices { id[i] = UInt8.random(in: 0...255) }
                    try txn.put(.meta, Self.identityKey, Array(hexString(id).utf8))
                }
                return try Self.decodeFormat(txn.get(.meta, Self.formatKey))
            }
        }
        guard (1...Self.currentFormat).contains(format) else {
            throw StoreError.unsupportedFormat(found: format, readable: 1...Self.currentFormat)
        }
        if format < Self.currentFormat && !readOnly {
            try Self.upgradeToChecksums(engine, keys: keys)
            format = Self.currentFormat
        }
        self.format = format
        requireChecksums = format >= 2
        writer = StoreThreads(name: "qs-store-writer", count: 1)
        self.readers = StoreThreads(name: "qs-store-reader", count: max(1, readers))
        background = StoreThreads(name: "qs-store-background", count: 1)
        // The newest entries' chain, before anything is served: damage found here is
        // reported (a root refuses to start, a replica repairs itself).
        do {
            let checked = try chainCheckedAt.map { at in
                let head = try readNow { try $0.head() }
                return head.index == at.index && head.hash == at.hash
            } ?? false
            if !checked { _ = try readNow { try $0.verifyChainTail(entries: Self.tailCheckedAtOpen) } }
        } catch {
            integrity.report(error)
        }
    }

    static func decodeFormat(_ raw: [UInt8]?) throws -> Int {
        guard let raw else { return 1 }
        guard raw.count == 1 else { throw StoreError.corrupt("format record of \(raw.count) bytes, expected 1") }
        return Int(raw[0])
    }

    /// Format 1 → 2: rewrites every record with its checksum, 10,000 per transaction (a
    /// crash resumes: records already rewritten carry the checksum flag), then records
    /// format 2 in the last transaction.
    static func upgradeToChecksums(_ engine: Engine, keys: KeyEncoding) throws {
        var from: [UInt8]?
        repeat {
            from = try engine.write { txn -> [UInt8]? in
                var seen = 0
                var last: [UInt8]?
                var rewrites = [([UInt8], [UInt8])]()
                try txn.forEach(.kv, from: from) { k, v in
                    if let from, k == from { return true }
                    guard seen < 10_000 else { return false }
                    seen += 1
                    last = k
                    if let flags = v.first, flags & RecordCodec.checksumFlag != 0 { return true }
                    let (full, record) = try RecordCodec.decode(storedKey: k, v, requireChecksum: false)
                    rewrites.append((k, RecordCodec.encode(record, storedKey: k, fullKey: keys.isLong(full) ? full : nil)))
                    return true
                }
                for (k, v) in rewrites { try txn.put(.kv, k, v) }
                if seen < 10_000 {
                    try txn.put(.meta, formatKey, [UInt8(currentFormat)])
                    return nil
                }
                return last
            }
        } while from != nil
    }

    /// A stored key as an operator reads it: the user key (printable, else hex), and for a
    /// long key its first bytes.
    public static func describeStoredKey(_ storedKey: [UInt8]) -> String {
        let key = storedKey.dropFirst()
        let shown = key.prefix(64)
        let printable = shown.allSatisfy { $0 >= 0x20 && $0 < 0x7F }
        let text = printable ? "'" + String(decoding: shown, as: UTF8.self) + "'" : "0x" + hexString(Array(shown))
        return key.count > 64 ? text + "… (\(key.count) bytes stored)" : text
    }

    /// Opens or creates the store in `directory` without blocking the caller's thread.
    public static func open(directory: String, mapSize: Int = 8 << 30, readOnly: Bool = false, noSync: Bool = false,
                            readers: Int = 4, stagingDirectory: String? = nil, engine: EngineKind? = nil,
                            rocksDB: RocksDBOptions = .init(), chainCheckedAt: Head? = nil) async throws -> Store {
        try await StoreThreads.once("qs-store-open") {
            try Store(directory: directory, mapSize: mapSize, readOnly: readOnly, noSync: noSync, readers: readers,
                      stagingDirectory: stagingDirectory, engine: engine, rocksDB: rocksDB, chainCheckedAt: chainCheckedAt)
        }
    }

    deinit {
        writer.stop()
        readers.stop()
        background.stop()
    }

    /// Closes the store at the end of a process, once nothing submits work to it any more:
    /// takes no more jobs, lets those already queued finish (a write accepted is committed,
    /// and told to its caller), and closes the engine (`Engine.close`; after it the store
    /// answers `StoreError.closed`). Returns the head as closed (nil if it could not be
    /// read). Waits for the store's threads at most `limit` seconds: a thread still busy
    /// then (a snapshot written to a peer that stopped reading) leaves the engine open and
    /// `shutDown` throws `StoreError.closeTimedOut`.
    @discardableResult
    public func shutDown(waitingAtMost limit: Double = 5) async throws -> Head? {
        try await StoreThreads.once("qs-store-close") { [self] in
            let deadline = Date(timeIntervalSinceNow: limit)
            guard writer.stopAndWait(until: deadline), background.stopAndWait(until: deadline) else {
                throw StoreError.closeTimedOut(seconds: limit, busy: "the writer or background thread")
            }
            let head = try? readNow { try $0.head() }
            guard readers.stopAndWait(until: deadline) else {
                throw StoreError.closeTimedOut(seconds: limit, busy: "a reader thread")
            }
            guard engine.close(wait: max(deadline.timeIntervalSinceNow, 0.1)) else {
                throw StoreError.closeTimedOut(seconds: limit, busy: "a read on a caller's thread")
            }
            return head
        }
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
        try engine.read { txn in try body(StoreTransaction(store: self, txn: EngineTransaction(handle: txn.handle), writable: false)) }
    }

    func writeNow<T>(_ body: (borrowing StoreTransaction) throws -> T) throws -> T {
        do {
            let result = try engine.write { txn in try body(StoreTransaction(store: self, txn: EngineTransaction(handle: txn.handle), writable: true)) }
            writeHealth.succeeded { (Store.freeBytes(at: directory) ?? .max) < Store.roomAfterDiskFull }
            return result
        } catch {
            let error = diskFullIfShortOfRoom(error)
            writeHealth.failed(error)
            throw error
        }
    }

    /// Write jobs queued behind the one running (for tests and metrics).
    public var queuedWrites: Int { writer.queued }

    // MARK: encoding helpers

    func readHead(_ txn: borrowing EngineTransaction) throws -> Head {
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

    func writeHead(_ head: Head, _ txn: borrowing EngineTransaction) throws {
        try txn.put(meta, Self.headKey, head.encoded())
    }

    static func validate(sourceID: String) throws {
        if let why = Origin.problem(sourceID: sourceID) { throw StoreError.invalidSourceID(why) }
    }

    static func encodeU64(_ v: UInt64) -> [UInt8] {
        var w = ByteWriter(capacity: 8)
        w.writeU64(v)
        return w.bytes
    }

    static func decodeU64(_ b: UnsafeRawBufferPointer, _ what: String) throws -> UInt64 {
        guard b.count == 8 else { throw StoreError.corrupt("\(what) is \(b.count) bytes, expected 8") }
        return b.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
    }

    static func decodeU64(_ b: [UInt8], _ what: String) throws -> UInt64 {
        guard b.count == 8 else { throw StoreError.corrupt("\(what) is \(b.count) bytes, expected 8") }
        var r = ByteReader(b)
        return try r.readU64()
    }
}
