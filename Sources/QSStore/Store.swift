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
            return "this root has accepted compatible appends (it mirrors another root's log entry for entry) and takes no other writes"
        }
    }
}

/// A node's storage: the keyspace (`kv`), the transaction log (`log`) and metadata
/// (`meta`: head, per-source checkpoints, identity) in one LMDB environment. This type and
/// `LMDBEnvironment` are the only code that touches LMDB.
public final class Store: Sendable {
    public let environment: LMDBEnvironment
    public let keys: KeyEncoding
    let kv: LMDBDatabase
    let log: LMDBDatabase
    let meta: LMDBDatabase

    static let headKey = Array("head".utf8)
    static let identityKey = Array("node-id".utf8)
    static let formatKey = Array("format".utf8)
    static let checkpointPrefix = Array("cp/".utf8)
    static let modeKey = Array("mode".utf8)
    static let compatibleMode = Array("compatible".utf8)
    public static let maxSourceIDBytes = 255

    /// Opens or creates the store in `directory` (created if missing).
    /// `noSync` skips fsync at commit: only for bulk loads that call `sync()` at the end
    /// (benchmarks), never for a serving node.
    public init(directory: String, mapSize: Int = 8 << 30, readOnly: Bool = false, noSync: Bool = false) throws {
        if !readOnly {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        environment = try LMDBEnvironment(path: directory, options: .init(mapSize: mapSize, readOnly: readOnly, noSync: noSync))
        keys = KeyEncoding(maxKeySize: environment.maxKeySize)
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
    }

    /// The node's identity, made at creation.
    public func identity() throws -> String {
        try environment.read { txn in
            String(decoding: try txn.get(meta, Self.identityKey) ?? [], as: UTF8.self)
        }
    }

    // MARK: writes

    /// Applies a batch with compare-and-swap on the source's checkpoint, in one durable
    /// write transaction: conflict if the checkpoint is not `expected`; otherwise drop
    /// operations that would not change the stored record, apply the rest, append one log
    /// entry (none if nothing is left) and store the checkpoint `new`.
    public func applyBatch(sourceID: String, expected: UInt64, new: UInt64,
                           operations: [Mutation], now: UInt64 = wallClockNanoseconds()) throws -> BatchOutcome {
        try Self.validate(sourceID: sourceID)
        guard new > expected else { throw StoreError.invalidPositions(expected: expected, new: new) }
        return try environment.write { txn in
            if try txn.get(meta, Self.modeKey) == Self.compatibleMode { throw StoreError.compatibleOnly }
            let cpKey = Self.checkpointPrefix + Array(sourceID.utf8)
            let current = try txn.get(meta, cpKey).map { try Self.decodeU64($0, "checkpoint") } ?? 0
            guard current == expected else { return .conflict(current: current) }
            var kept = [Mutation]()
            kept.reserveCapacity(operations.count)
            for op in operations where try apply(op, in: txn) {
                kept.append(op)
            }
            var index: UInt64?
            if !kept.isEmpty {
                let entry = LogEntry(commitTimeNs: 0, origin: Origin(sourceID: sourceID, position: new), operations: kept)
                index = try appendEntry(entry, now: now, in: txn)
            }
            try txn.put(meta, cpKey, Self.encodeU64(new))
            return .applied(logIndex: index, kept: kept.count, dropped: operations.count - kept.count)
        }
    }

    static func validate(sourceID: String) throws {
        let n = sourceID.utf8.count
        guard n > 0 else { throw StoreError.invalidSourceID("empty") }
        guard n <= maxSourceIDBytes else { throw StoreError.invalidSourceID("\(n) bytes, the limit is \(maxSourceIDBytes)") }
    }

    /// Appends an entry after the head with a commit time no earlier than the head's.
    private func appendEntry(_ entry: LogEntry, now: UInt64, in txn: borrowing LMDBTransaction) throws -> UInt64 {
        let head = try readHead(txn)
        var e = entry
        e.commitTimeNs = max(now, head.commitTimeNs)
        let bytes = e.encoded()
        let hash = ChainHash.next(previous: head.hash, entry: bytes)
        let index = head.index + 1
        try txn.put(log, Self.encodeU64(index), hash + bytes, append: true)
        try writeHead(Head(index: index, hash: hash, commitTimeNs: e.commitTimeNs), txn)
        return index
    }

    /// Applies one operation; returns false when it would not change the stored state.
    func apply(_ op: Mutation, in txn: borrowing LMDBTransaction) throws -> Bool {
        switch op {
        case let .set(key, value, expiry):
            let sk = keys.storedKey(key)
            let record = Record(value: value, expiry: expiry)
            if let old = try txn.get(kv, sk), let decoded = try? RecordCodec.decode(storedKey: sk, old),
               decoded.key == key, decoded.record == record {
                return false
            }
            try txn.put(kv, sk, RecordCodec.encode(record, fullKey: keys.isLong(key) ? key : nil))
            return true
        case let .delete(key):
            return try txn.delete(kv, keys.storedKey(key))
        case let .clearPrefix(prefix):
            return try clear(prefix: prefix, in: txn) > 0
        }
    }

    /// Deletes every key starting with `prefix`, in chunks so memory stays bounded.
    private func clear(prefix: [UInt8], in txn: borrowing LMDBTransaction) throws -> Int {
        let start = keys.storedScanPrefix(prefix)
        var removed = 0
        var from = start
        while true {
            var doomed = [[UInt8]]()
            var lastSeen: [UInt8]?
            try txn.forEach(kv, from: from) { sk, value in
                guard sk.starts(with: start) else { return false }
                lastSeen = sk
                let full = try RecordCodec.decode(storedKey: sk, value).key
                if full.starts(with: prefix) { doomed.append(sk) }
                return doomed.count < 4096
            }
            for sk in doomed { try txn.delete(kv, sk) }
            removed += doomed.count
            guard let lastSeen, doomed.count >= 4096 else { break }
            from = lastSeen
        }
        return removed
    }

    // MARK: reads

    /// The source's checkpoint (last applied position), nil if it never wrote.
    public func checkpoint(sourceID: String) throws -> UInt64? {
        try environment.read { txn in
            try txn.get(meta, Self.checkpointPrefix + Array(sourceID.utf8)).map { try Self.decodeU64($0, "checkpoint") }
        }
    }

    /// Every source's checkpoint.
    public func checkpoints() throws -> [String: UInt64] {
        try environment.read { txn in
            var out = [String: UInt64]()
            try txn.forEach(meta, from: Self.checkpointPrefix) { k, v in
                guard k.starts(with: Self.checkpointPrefix) else { return false }
                out[String(decoding: k.dropFirst(Self.checkpointPrefix.count), as: UTF8.self)] = try Self.decodeU64(v, "checkpoint")
                return true
            }
            return out
        }
    }

    public func head() throws -> Head {
        try environment.read { try readHead($0) }
    }

    /// The stored record for `key`, expired or not (callers decide what to hide).
    public func get(_ key: [UInt8]) throws -> Record? {
        let sk = keys.storedKey(key)
        return try environment.read { txn in
            guard let raw = try txn.get(kv, sk) else { return nil }
            let (full, record) = try RecordCodec.decode(storedKey: sk, raw)
            return full == key ? record : nil
        }
    }

    /// Log entries from index `from`, at most `count` of them and about `maxBytes` (at
    /// least one entry is returned if any exists).
    public func entries(from: UInt64, count: Int, maxBytes: Int = 4 << 20) throws -> [StoredEntry] {
        try environment.read { txn in
            var out = [StoredEntry]()
            var bytes = 0
            try txn.forEach(log, from: Self.encodeU64(max(from, 1))) { k, v in
                guard v.count >= 32 else { throw StoreError.corrupt("log entry shorter than its hash") }
                let index = try Self.decodeU64(k, "log index")
                out.append(StoredEntry(index: index, hash: Array(v[0..<32]), bytes: Array(v[32...])))
                bytes += v.count
                return out.count < count && bytes < maxBytes
            }
            return out
        }
    }

    /// One page of a keyspace scan in stored-key order. `after` is the continuation a
    /// previous page returned (nil to start). Expired records are hidden when `now`
    /// (epoch seconds) is given. Returns the records and the continuation, nil at the end.
    public func scan(prefix: [UInt8] = [], after: [UInt8]? = nil, limit: Int, maxBytes: Int = 4 << 20,
                     now: UInt64?) throws -> (records: [(key: [UInt8], record: Record)], next: [UInt8]?) {
        let start = keys.storedScanPrefix(prefix)
        return try environment.read { txn in
            var out = [(key: [UInt8], record: Record)]()
            var bytes = 0
            var last: [UInt8]?
            var more = false
            try txn.forEach(kv, from: after ?? start) { sk, value in
                if let after, sk == after { return true }
                guard sk.starts(with: start) else { return false }
                if out.count >= limit || bytes >= maxBytes {
                    more = true
                    return false
                }
                last = sk
                let (full, record) = try RecordCodec.decode(storedKey: sk, value)
                guard full.starts(with: prefix) else { return true }
                if let now, record.isExpired(at: now) { return true }
                out.append((full, record))
                bytes += full.count + record.value.count
                return true
            }
            return (out, more ? last : nil)
        }
    }

    /// Number of stored records (expired ones included).
    public func recordCount() throws -> Int {
        try environment.read { try $0.count(kv) }
    }

    /// Re-computes the hash chain over the whole log and checks it against the stored
    /// hashes and the head. Returns the number of entries checked.
    @discardableResult
    public func verifyChain() throws -> UInt64 {
        try environment.read { txn in
            let window = try readWindow(txn)
            var previous = window.baseHash
            var expectedIndex = window.firstIndex
            try txn.forEach(log) { k, v in
                let index = try Self.decodeU64(k, "log index")
                guard index == expectedIndex, v.count >= 32 else { throw StoreError.brokenChain(index: index) }
                let hash = ChainHash.next(previous: previous, entry: Array(v[32...]))
                guard hash == Array(v[0..<32]) else { throw StoreError.brokenChain(index: index) }
                previous = hash
                expectedIndex += 1
                return true
            }
            let head = try readHead(txn)
            guard head.index == expectedIndex - 1, head.hash == previous else {
                throw StoreError.brokenChain(index: head.index)
            }
            return head.index + 1 - window.firstIndex
        }
    }

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
        var w = ByteWriter(capacity: 48)
        w.writeU64(head.index)
        w.writeBytes(head.hash)
        w.writeU64(head.commitTimeNs)
        try txn.put(meta, Self.headKey, w.bytes)
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
