import QSModel
import Foundation
import QSBytes

/// A transaction on a `Store`, only valid inside the closure that received it (it cannot
/// be copied or kept). A read transaction sees one committed state; a write transaction
/// commits when its closure returns and rolls back when it throws.
public struct StoreTransaction: ~Copyable {
    let store: Store
    let txn: EngineTransaction
    /// Whether this is a write transaction.
    public let writable: Bool

    var keys: KeyEncoding { store.keys }
    var kv: Table { .kv }
    var log: Table { .log }
    var meta: Table { .meta }

    func requireWritable() throws {
        guard writable else { throw StoreError.readOnlyTransaction }
    }

    // MARK: reads

    /// The node's identity, made at creation.
    public func identity() throws -> String {
        String(decoding: try txn.get(meta, Store.identityKey) ?? [], as: UTF8.self)
    }

    /// The source's checkpoint (last applied position), nil if it never wrote.
    public func checkpoint(sourceID: String) throws -> UInt64? {
        try txn.get(meta, Store.checkpointPrefix + Array(sourceID.utf8)).map { try Store.decodeU64($0, "checkpoint") }
    }

    /// The source's unfinished initial copy's cursor, if a copy is in progress.
    public func copyCursor(sourceID: String) throws -> [UInt8]? {
        try txn.get(meta, Store.copyCursorPrefix + Array(sourceID.utf8))
    }

    /// The source's descriptor as recorded (`setDescriptor`), nil when none is.
    public func descriptor(sourceID: String) throws -> String? {
        try txn.get(meta, Store.descriptorPrefix + Array(sourceID.utf8)).map { String(decoding: $0, as: UTF8.self) }
    }

    /// Every source's recorded descriptor.
    public func descriptors() throws -> [String: String] {
        var out = [String: String]()
        try txn.forEach(meta, from: Store.descriptorPrefix) { k, v in
            guard k.starts(with: Store.descriptorPrefix) else { return false }
            out[String(decoding: k.dropFirst(Store.descriptorPrefix.count), as: UTF8.self)] = String(decoding: v, as: UTF8.self)
            return true
        }
        return out
    }

    /// Every source's checkpoint.
    public func checkpoints() throws -> [String: UInt64] {
        var out = [String: UInt64]()
        try txn.forEach(meta, from: Store.checkpointPrefix) { k, v in
            guard k.starts(with: Store.checkpointPrefix) else { return false }
            out[String(decoding: k.dropFirst(Store.checkpointPrefix.count), as: UTF8.self)] = try Store.decodeU64(v, "checkpoint")
            return true
        }
        return out
    }

    public func head() throws -> Head {
        try store.readHead(txn)
    }

    /// The stored record for `key`, expired or not (callers decide what to hide).
    public func get(_ key: [UInt8]) throws -> Record? {
        let sk = keys.storedKey(key)
        guard let raw = try txn.get(kv, sk) else { return nil }
        let (full, record) = try decodeRecord(sk, raw)
        return full == key ? record : nil
    }

    /// Calls `body` with the stored record for `key` seen in place (expired or not; callers
    /// decide what to hide), nil when there is none. The value is LMDB's mapped memory, valid
    /// only inside `body`: nothing is copied, and for a key of at most `KeyEncoding.inlineLimit`
    /// bytes nothing is allocated. For the read servers' hot path. Inlinable, as
    /// `withRecord(bytes:)` is, so a caller in another module gets it specialised to its `T`.
    @inlinable
    public func withRecord<T>(_ key: [UInt8], _ body: (RecordView?) throws -> T) throws -> T {
        try key.withUnsafeBytes { try withRecord(bytes: $0, body) }
    }

    /// `withRecord` for a key seen in place (e.g. in a request's bytes): nothing is copied
    /// or allocated for a key of at most `KeyEncoding.inlineLimit` bytes; the record's
    /// checksum is checked as on every read. Inlinable, so a caller in another module gets
    /// it specialised to its `T` (the generic form costs a `Result` and metadata lookups
    /// per read); the work is `viewRecord`'s.
    @inlinable
    public func withRecord<T>(bytes key: UnsafeRawBufferPointer, _ body: (RecordView?) throws -> T) throws -> T {
        var result: T?
        try viewRecord(bytes: key) { result = try body($0) }
        guard let result else { preconditionFailure("viewRecord returned without calling its body") }
        return result
    }

    /// Runs `body` once with the record of `key` (nil when there is none), its value seen
    /// in place in the store's memory for the duration of the call.
    public func viewRecord(bytes key: UnsafeRawBufferPointer, _ body: (RecordView?) throws -> Void) throws {
        guard key.count <= keys.inlineLimit else {
            guard let record = try get(Array(key)) else { return try body(nil) }
            return try record.value.withUnsafeBytes { try body(RecordView(expiry: record.expiry, value: $0)) }
        }
        try withUnsafeTemporaryAllocation(byteCount: key.count + 1, alignment: 1) { stored in
            stored[0] = KeyEncoding.tag
            UnsafeMutableRawBufferPointer(rebasing: stored[1...]).copyMemory(from: key)
            let storedKey = UnsafeRawBufferPointer(stored)
            try txn.withValue(kv, storedKey) { raw in
                let view: RecordView?
                do {
                    view = try raw.flatMap { try RecordCodec.view($0, storedKey: storedKey, key: key, requireChecksum: store.requireChecksums) }
                } catch {
                    store.integrity.report(error)
                    throw error
                }
                try body(view)
            }
        }
    }

    /// Log entries from index `from`, at most `count` of them and about `maxBytes` (at
    /// least one entry is returned if any exists). Each entry's chained hash is checked
    /// against the one before it: a damaged entry is never served (it throws
    /// `brokenChain`, reported to the store's integrity).
    public func entries(from: UInt64, count: Int, maxBytes: Int = 4 << 20) throws -> [StoredEntry] {
        var out = [StoredEntry]()
        try walkEntries(from: from, count: count, maxBytes: maxBytes) { index, hash, entry in
            out.append(StoredEntry(index: index, hash: Array(hash), bytes: Array(entry)))
        }
        return out
    }

    /// `entries(from:count:maxBytes:)` as the protocol carries them (`PackedEntries`): the
    /// same entries, checked the same way, written from the log's pages into one list with
    /// no array per entry. What an upstream streams to its replicas.
    public func packedEntries(from: UInt64, count: Int, maxBytes: Int = 4 << 20) throws -> PackedEntries {
        var out = [UInt8](repeating: 0, count: 4)
        var n = 0
        // Appended as the array grows (geometrically): no exact reserve per entry, which
        // would reallocate and copy the whole list at every entry.
        func append(_ bytes: UnsafeRawBufferPointer) {
            out.append(contentsOf: UnsafeBufferPointer(start: bytes.baseAddress?.assumingMemoryBound(to: UInt8.self), count: bytes.count))
        }
        try walkEntries(from: from, count: count, maxBytes: maxBytes) { index, hash, entry in
            withUnsafeBytes(of: index.bigEndian) { append($0) }
            append(hash)
            withUnsafeBytes(of: UInt32(entry.count).bigEndian) { append($0) }
            append(entry)
            n += 1
        }
        for i in 0..<4 { out[i] = UInt8(truncatingIfNeeded: n >> (24 - 8 * i)) }
        return PackedEntries(encoded: out, count: n)
    }

    /// Walks the log from `from` as `entries` reads it: each entry's chained hash checked
    /// against the one before it, `body` given its index, hash and bytes in place (valid
    /// only during the call), at most `count` entries and about `maxBytes`.
    private func walkEntries(from: UInt64, count: Int, maxBytes: Int,
                             _ body: (UInt64, UnsafeRawBufferPointer, UnsafeRawBufferPointer) throws -> Void) throws {
        var bytes = 0, seen = 0
        let start = max(from, 1)
        do {
            var previous: [UInt8]?
            try txn.forEachInPlace(log, from: Store.encodeU64(start)) { k, v in
                let index = try Store.decodeU64(k, "log index")
                guard v.count >= 32, let p = try previous ?? hash(at: index - 1) else { throw StoreError.brokenChain(index: index) }
                let hash = UnsafeRawBufferPointer(rebasing: v[0..<32]), entry = UnsafeRawBufferPointer(rebasing: v[32...])
                let computed = ChainHash.next(previous: p, entry: entry)
                guard computed.elementsEqual(hash) else { throw StoreError.brokenChain(index: index) }
                previous = computed
                try body(index, hash, entry)
                seen += 1
                bytes += v.count
                return seen < count && bytes < maxBytes
            }
        } catch {
            store.integrity.report(error)
            throw error
        }
    }

    /// One page of a keyspace scan in stored-key order. `after` is the continuation a
    /// previous page returned (nil to start). Expired records are hidden when `now`
    /// (epoch seconds) is given. Returns the records and the continuation, nil at the end.
    public func scan(prefix: [UInt8] = [], after: [UInt8]? = nil, limit: Int, maxBytes: Int = 4 << 20,
                     now: UInt64?) throws -> (records: [(key: [UInt8], record: Record)], next: [UInt8]?) {
        let start = keys.storedScanPrefix(prefix)
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
            let (full, record) = try decodeRecord(sk, value)
            guard full.starts(with: prefix) else { return true }
            if let now, record.isExpired(at: now) { return true }
            out.append((full, record))
            bytes += full.count + record.value.count
            return true
        }
        return (out, more ? last : nil)
    }

    /// Number of stored records (expired ones included).
    public func recordCount() throws -> Int {
        try txn.count(kv)
    }

    /// Re-computes the hash chain over the whole log and checks it against the stored
    /// hashes and the head. Returns the number of entries checked.
    @discardableResult
    public func verifyChain() throws -> UInt64 {
        let window = try logWindow()
        let (next, last) = try verifyLinks(from: window.firstIndex, through: nil, previous: window.baseHash)
        let head = try head()
        guard head.index == next - 1, head.hash == last else {
            throw StoreError.brokenChain(index: head.index)
        }
        return head.index + 1 - window.firstIndex
    }

    /// Checks the log entries from `first` (which must be the log's first when `first` is
    /// the window's: entries before it count as missing ones) through `last` (nil: the
    /// log's end), each against its stored chained hash, the first computed from
    /// `previous`, in order and without gaps. Returns the index after the last entry
    /// checked and its hash (`first` and `previous` when there was none). Entries are
    /// hashed in place: a large one is megabytes.
    func verifyLinks(from first: UInt64, through last: UInt64?, previous: [UInt8]) throws -> (next: UInt64, hash: [UInt8]) {
        var previous = previous
        var expectedIndex = first
        let start = try first == logWindow().firstIndex ? nil : Store.encodeU64(first)
        try txn.forEachInPlace(log, from: start) { k, v in
            let index = try Store.decodeU64(k, "log index")
            if let last, index > last { return false }
            guard index == expectedIndex, v.count >= 32 else { throw StoreError.brokenChain(index: index) }
            let hash = ChainHash.next(previous: previous, entry: UnsafeRawBufferPointer(rebasing: v[32...]))
            guard hash.elementsEqual(v[0..<32]) else { throw StoreError.brokenChain(index: index) }
            previous = hash
            expectedIndex += 1
            return true
        }
        return (expectedIndex, previous)
    }

    // MARK: writes

    /// Applies a batch with compare-and-swap on the source's checkpoint: conflict if the
    /// checkpoint is not `expected`; otherwise drop operations that would not change the
    /// stored record, apply the rest, append one log entry (none if nothing is left) and
    /// store the checkpoint `new`.
    /// `copyCursor` is stored beside the checkpoint when given; a batch without one removes
    /// the source's cursor (its initial copy, if any, is over).
    public func applyBatch(sourceID: String, expected: UInt64, new: UInt64,
                           operations: [Mutation], copyCursor: [UInt8]? = nil,
                           now: UInt64 = wallClockNanoseconds()) throws -> BatchOutcome {
        try applyBatch(sourceID: sourceID, expected: expected, new: new, operations: PackedMutations(operations),
                       copyCursor: copyCursor, now: now)
    }

    /// `applyBatch` of operations read in place (a request's bytes): no array per key and
    /// value, and the batch's bytes become the entry's list whole unless something is dropped.
    public func applyBatch(sourceID: String, expected: UInt64, new: UInt64,
                           operations: PackedMutations, copyCursor: [UInt8]? = nil,
                           now: UInt64 = wallClockNanoseconds()) throws -> BatchOutcome {
        try compareAndSwap(sourceID: sourceID, expected: expected, new: new, copyCursor: copyCursor, now: now) {
            // The batch itself is the entry's list unless something is dropped: only then
            // is a list of the kept operations built (from runs of their bytes).
            var kept: (runs: [Range<Int>], count: Int)?
            var i = 0
            try withKeyspaceWriter { writer in
                try operations.forEach { op in
                    defer { i += 1 }
                    if try apply(op, writer) {
                        guard kept != nil else { return }
                        if let last = kept!.runs.last, last.upperBound == op.range.lowerBound {
                            kept!.runs[kept!.runs.count - 1] = last.lowerBound..<op.range.upperBound
                        } else {
                            kept!.runs.append(op.range)
                        }
                        kept!.count += 1
                    } else if kept == nil {
                        // The first dropped: the operations before it are kept, one run.
                        kept = (i > 0 ? [PackedMutations.firstOperation..<op.range.lowerBound] : [], i)
                    }
                }
            }
            return kept.map { operations.selecting($0.runs, count: $0.count) } ?? operations
        }.outcome(total: operations.count)
    }

    /// Applies conditional writes with compare-and-swap on the source's checkpoint, like
    /// `applyBatch`: each write is decided against the key's live record at `now` as this
    /// transaction sees it (earlier writes of the batch included), so the decision and the
    /// change are one atomic step; the log entry holds the resulting plain mutations.
    public func applyWrites(sourceID: String, expected: UInt64, new: UInt64, writes: [ConditionalWrite],
                            now: UInt64 = wallClockNanoseconds()) throws -> WritesOutcome {
        var outcomes = [ConditionalWrite.Outcome]()
        outcomes.reserveCapacity(writes.count)
        let seconds = now / 1_000_000_000
        let step = try compareAndSwap(sourceID: sourceID, expected: expected, new: new, now: now) {
            var kept = [Mutation]()
            try withKeyspaceWriter { writer in
                for w in writes {
                    let current = try get(w.key).flatMap { $0.isExpired(at: seconds) ? nil : $0 }
                    let (mutation, outcome) = w.evaluate(current: current)
                    outcomes.append(outcome)
                    if let mutation, try apply(mutation, writer) { kept.append(mutation) }
                }
            }
            return kept
        }
        switch step {
        case let .conflict(current): return .conflict(current: current)
        case let .applied(index, _): return .written(logIndex: index, outcomes: outcomes)
        }
    }

    private enum CASStep {
        case conflict(current: UInt64)
        case applied(logIndex: UInt64?, kept: Int)

        func outcome(total: Int) -> BatchOutcome {
            switch self {
            case let .conflict(current): return .conflict(current: current)
            case let .applied(index, kept): return .applied(logIndex: index, kept: kept, dropped: total - kept)
            }
        }
    }

    /// The compare-and-swap every batched write goes through: checks the source's
    /// checkpoint, runs `body` (which applies the changes and returns those that changed
    /// something), appends one log entry for them (none if there are none) and stores `new`,
    /// with `copyCursor` beside it (none: the source's initial copy, if any, is over).
    private func compareAndSwap<Kept: MutationList>(sourceID: String, expected: UInt64, new: UInt64, copyCursor: [UInt8]? = nil,
                                                    now: UInt64, _ body: () throws -> Kept) throws -> CASStep {
        try requireWritable()
        try Store.validate(sourceID: sourceID)
        guard new > expected else { throw StoreError.invalidPositions(expected: expected, new: new) }
        if try txn.get(meta, Store.modeKey) == Store.compatibleMode { throw StoreError.compatibleOnly }
        let cpKey = Store.checkpointPrefix + Array(sourceID.utf8)
        let current = try txn.get(meta, cpKey).map { try Store.decodeU64($0, "checkpoint") } ?? 0
        guard current == expected else { return .conflict(current: current) }
        let kept = try body()
        var index: UInt64?
        if kept.operationCount > 0 {
            index = try appendEntry(origin: Origin(sourceID: sourceID, position: new), operations: kept, copyCursor: copyCursor, now: now)
        }
        try storePosition(sourceID: sourceID, position: new, copyCursor: copyCursor)
        return .applied(logIndex: index, kept: kept.operationCount)
    }

    /// Stores a source's checkpoint with its initial-copy cursor beside it (nil removes the
    /// cursor: the source's copy, if any, is over). A batch does this at its root; applying
    /// its log entry elsewhere (a replica, a compatible mirror) does the same, so both travel.
    func storePosition(sourceID: String, position: UInt64, copyCursor: [UInt8]?) throws {
        try txn.put(meta, Store.checkpointPrefix + Array(sourceID.utf8), Store.encodeU64(position))
        let ccKey = Store.copyCursorPrefix + Array(sourceID.utf8)
        if let copyCursor { try txn.put(meta, ccKey, copyCursor) } else { _ = try txn.delete(meta, ccKey) }
    }

    /// What `setDescriptor` did.
    public enum DescriptorOutcome: Sendable, Equatable {
        /// The root held this descriptor already: nothing written.
        case unchanged
        /// Recorded by the log entry at `logIndex`; `previous`: what it replaced (nil: none).
        case recorded(logIndex: UInt64, previous: String?)
        /// The root holds another descriptor and `replace` was not asked: nothing written.
        case differs(stored: String)
    }

    /// Records `descriptor` for `sourceID` (`meta sd/<sourceID>` and a version-3 log entry,
    /// so replicas and mirrors hold it too) when the root holds none, or another and
    /// `replace` is asked. The source's checkpoint and copy cursor are not touched (a
    /// source with no checkpoint still has none: its writer's first start is still one).
    public func setDescriptor(sourceID: String, descriptor: String, replace: Bool,
                              now: UInt64 = wallClockNanoseconds()) throws -> DescriptorOutcome {
        try requireWritable()
        try Store.validate(sourceID: sourceID)
        if let why = SourceDescriptor.problem(descriptor) { throw StoreError.invalidDescriptor(why) }
        if try txn.get(meta, Store.modeKey) == Store.compatibleMode { throw StoreError.compatibleOnly }
        let stored = try self.descriptor(sourceID: sourceID)
        if stored == descriptor { return .unchanged }
        if let stored, !replace { return .differs(stored: stored) }
        // The copy's records so far are under the recorded mapping, its cursor on: the rest
        // would go elsewhere.
        if stored != nil, try copyCursor(sourceID: sourceID) != nil { throw StoreError.copyUnfinished(sourceID: sourceID) }
        let origin = Origin(sourceID: sourceID, position: try checkpoint(sourceID: sourceID) ?? 0)
        let entry = LogEntry(commitTimeNs: 0, origin: origin, descriptor: descriptor)
        let index = try appendEntry(count: entry.encodedCount, now: now) { commitTimeNs, w in
            LogEntry.encode(commitTimeNs: commitTimeNs, origin: origin, descriptor: descriptor, into: &w)
        }
        try txn.put(meta, Store.descriptorPrefix + Array(sourceID.utf8), Array(descriptor.utf8))
        return .recorded(logIndex: index, previous: stored)
    }

    /// What one step of the expiry purge did.
    public struct PurgeStep: Sendable, Equatable {
        /// Records deleted (each one expired at `now`).
        public var purged: Int
        /// The log entry holding the deletes, nil when nothing was purged.
        public var logIndex: UInt64?
        /// Where the next step continues, nil when the keyspace's end was reached.
        public var next: [UInt8]?

        public init(purged: Int, logIndex: UInt64?, next: [UInt8]?) {
            self.purged = purged
            self.logIndex = logIndex
            self.next = next
        }
    }

    /// One step of the expiry purge: looks at up to `scanLimit` records after `after` (nil:
    /// from the start) and deletes those expired at `now` (epoch seconds), at most
    /// `maxDeletes`, as an ordinary batch of `sourceID` (its checkpoint counts the purge
    /// batches), so the deletes are logged and every replica applies them. Checking and
    /// deleting happen in this one transaction: a record rewritten meanwhile is not touched.
    public func purgeExpired(after: [UInt8]?, scanLimit: Int, maxDeletes: Int, now: UInt64, sourceID: String,
                             nowNs: UInt64 = wallClockNanoseconds()) throws -> PurgeStep {
        try requireWritable()
        var doomed = [Mutation]()
        var last: [UInt8]?
        var seen = 0
        var more = false
        try txn.forEach(kv, from: after ?? keys.storedScanPrefix([])) { sk, value in
            if let after, sk == after { return true }
            if seen >= scanLimit || doomed.count >= maxDeletes {
                more = true
                return false
            }
            seen += 1
            last = sk
            // A record without an expiry cannot have expired: skip it undecoded.
            guard RecordCodec.mayExpire(value) else { return true }
            let (full, record) = try decodeRecord(sk, value)
            if record.isExpired(at: now) { doomed.append(.delete(key: full)) }
            return true
        }
        let next = more ? last : nil
        guard !doomed.isEmpty else { return PurgeStep(purged: 0, logIndex: nil, next: next) }
        let cp = try checkpoint(sourceID: sourceID) ?? 0
        guard case let .applied(index, kept, _) = try applyBatch(sourceID: sourceID, expected: cp, new: cp + 1,
                                                                   operations: doomed, now: nowNs) else {
            throw StoreError.corrupt("the purge's own checkpoint moved inside its transaction")
        }
        return PurgeStep(purged: kept, logIndex: index, next: next)
    }

    /// Appends an entry after the head with a commit time no earlier than the head's.
    private func appendEntry(origin: Origin, operations: some MutationList, copyCursor: [UInt8]?, now: UInt64) throws -> UInt64 {
        try appendEntry(count: LogEntry.encodedCount(origin: origin, operations: operations, copyCursor: copyCursor), now: now) { t, w in
            LogEntry.encode(commitTimeNs: t, origin: origin, operations: operations, copyCursor: copyCursor, into: &w)
        }
    }

    /// Appends the entry of `count` bytes `encode` writes (given its commit time).
    private func appendEntry(count: Int, now: UInt64, _ encode: (UInt64, inout RawByteWriter) -> Void) throws -> UInt64 {
        let head = try head()
        let commitTimeNs = max(now, head.commitTimeNs)
        let index = head.index + 1
        let hashCount = head.hash.count
        var hash = [UInt8]()
        // `hash ‖ bytes`: the entry is encoded straight into the page LMDB reserves and
        // hashed there (no array of it, no joined copy).
        try txn.put(log, Store.encodeU64(index), reserving: hashCount + count, append: true) { out in
            let body = UnsafeMutableRawBufferPointer(rebasing: out[hashCount...])
            var w = RawByteWriter(body)
            encode(commitTimeNs, &w)
            precondition(w.remaining == 0, "a log entry announced \(body.count) bytes and wrote \(w.offset)")
            hash = ChainHash.next(previous: head.hash, entry: UnsafeRawBufferPointer(body))
            precondition(hash.count == hashCount, "a chained hash of \(hash.count) bytes after one of \(hashCount)")
            hash.withUnsafeBytes { out.copyMemory(from: $0) }
        }
        try store.writeHead(Head(index: index, hash: hash, commitTimeNs: commitTimeNs), txn)
        return index
    }

    /// Runs `body` with a writer into the keyspace for a run of `apply` calls (one cursor for
    /// them all on LMDB).
    func withKeyspaceWriter<T>(_ body: (borrowing TableWriter) throws -> T) throws -> T {
        try txn.withWriter(kv, body)
    }

    /// Applies one operation through `writer` (from `withKeyspaceWriter`); returns false when
    /// it would not change the stored state.
    func apply(_ op: Mutation, _ writer: borrowing TableWriter) throws -> Bool {
        switch op {
        case let .set(key, value, expiry):
            return try key.withUnsafeBytes { k in try value.withUnsafeBytes { v in try set(key: k, value: v, expiry: expiry, writer) } }
        case let .delete(key):
            return try txn.delete(kv, keys.storedKey(key))
        case let .clearPrefix(prefix):
            return try clear(prefix: prefix) > 0
        }
    }

    /// `apply` of an operation read in place.
    func apply(_ op: MutationView, _ writer: borrowing TableWriter) throws -> Bool {
        switch op.kind {
        case .set: return try set(key: op.key, value: op.value, expiry: op.expiry, writer)
        case .delete: return try keys.withStoredKey(op.key) { try txn.delete(kv, Array($0)) }
        case .clearPrefix: return try clear(prefix: Array(op.key)) > 0
        }
    }

    private func set(key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer, expiry: UInt64?,
                     _ writer: borrowing TableWriter) throws -> Bool {
        // The encoding is a function of the key and the record (checksum included), and a
        // writable store holds only this format: equal bytes are an identical write,
        // dropped; a different or damaged old record is replaced (the write repairs it).
        // Stored key and record are encoded on the stack, not into arrays.
        try keys.withStoredKey(key) { sk in
            try RecordCodec.withEncoded(value: value, expiry: expiry, storedKey: sk, fullKey: keys.isLong(key) ? key : nil) {
                try writer.putIfChanged(sk, $0)
            }
        }
    }

    /// Deletes every key starting with `prefix`, in chunks so memory stays bounded.
    private func clear(prefix: [UInt8]) throws -> Int {
        let start = keys.storedScanPrefix(prefix)
        var removed = 0
        var from = start
        while true {
            var doomed = [[UInt8]]()
            var lastSeen: [UInt8]?
            try txn.forEach(kv, from: from) { sk, value in
                guard sk.starts(with: start) else { return false }
                lastSeen = sk
                let full = try decodeRecord(sk, value).key
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
}

// MARK: typed operations, each in its own transaction on the right thread

extension Store {
    /// The node's identity, made at creation.
    public func identity() async throws -> String { try await read { try $0.identity() } }

    /// The source's checkpoint (last applied position), nil if it never wrote.
    public func checkpoint(sourceID: String) async throws -> UInt64? { try await read { try $0.checkpoint(sourceID: sourceID) } }

    /// Every source's checkpoint.
    public func checkpoints() async throws -> [String: UInt64] { try await read { try $0.checkpoints() } }

    public func head() async throws -> Head { try await read { try $0.head() } }

    /// The stored record for `key`, expired or not (callers decide what to hide).
    public func get(_ key: [UInt8]) async throws -> Record? { try await read { try $0.get(key) } }

    /// See `StoreTransaction.entries`.
    public func entries(from: UInt64, count: Int, maxBytes: Int = 4 << 20) async throws -> [StoredEntry] {
        try await read { try $0.entries(from: from, count: count, maxBytes: maxBytes) }
    }

    /// See `StoreTransaction.packedEntries`.
    public func packedEntries(from: UInt64, count: Int, maxBytes: Int = 4 << 20) async throws -> PackedEntries {
        try await read { try $0.packedEntries(from: from, count: count, maxBytes: maxBytes) }
    }

    /// See `StoreTransaction.scan`.
    public func scan(prefix: [UInt8] = [], after: [UInt8]? = nil, limit: Int, maxBytes: Int = 4 << 20,
                     now: UInt64?) async throws -> (records: [(key: [UInt8], record: Record)], next: [UInt8]?) {
        try await read { try $0.scan(prefix: prefix, after: after, limit: limit, maxBytes: maxBytes, now: now) }
    }

    /// Number of stored records (expired ones included).
    public func recordCount() async throws -> Int { try await read { try $0.recordCount() } }

    /// See `StoreTransaction.verifyChain`.
    @discardableResult
    public func verifyChain() async throws -> UInt64 { try await read { try $0.verifyChain() } }

    /// One step of the expiry purge (see `StoreTransaction.purgeExpired`) in one durable
    /// write transaction on the writer thread.
    public func purgeExpired(after: [UInt8]?, scanLimit: Int, maxDeletes: Int, now: UInt64,
                             sourceID: String) async throws -> StoreTransaction.PurgeStep {
        try await write { try $0.purgeExpired(after: after, scanLimit: scanLimit, maxDeletes: maxDeletes, now: now, sourceID: sourceID) }
    }

    /// The bytes the store takes and the most it may take (LMDB: the map's size and the
    /// bytes in use in it, `LMDBEnvironment.usage`).
    public func usage() async throws -> (usedBytes: Int, mapSizeBytes: Int) {
        try await read { txn in txn.store.engine.usage() }
    }

    /// A RocksDB store's cache, memtables and files (`EngineMemory`); nil on LMDB, whose
    /// pages are the kernel's page cache, not the process's memory.
    public func engineMemory() async throws -> EngineMemory? {
        try await readers.run {
            guard case let .rocksdb(e) = self.engine else { return nil }
            return e.memory()
        }
    }

    /// Applies a batch (see `StoreTransaction.applyBatch`) in one durable write transaction
    /// on the writer thread.
    public func applyBatch(sourceID: String, expected: UInt64, new: UInt64,
                           operations: [Mutation], copyCursor: [UInt8]? = nil,
                           now: UInt64 = wallClockNanoseconds()) async throws -> BatchOutcome {
        try await applyBatch(sourceID: sourceID, expected: expected, new: new, operations: PackedMutations(operations),
                             copyCursor: copyCursor, now: now)
    }

    /// `applyBatch` of operations read in place (a request's bytes).
    public func applyBatch(sourceID: String, expected: UInt64, new: UInt64,
                           operations: PackedMutations, copyCursor: [UInt8]? = nil,
                           now: UInt64 = wallClockNanoseconds()) async throws -> BatchOutcome {
        try await write {
            try $0.applyBatch(sourceID: sourceID, expected: expected, new: new, operations: operations, copyCursor: copyCursor, now: now)
        }
    }

    /// `applyBatch` for a caller that is not a task (an event loop): queued for the writer
    /// thread, `completion` runs there with the outcome.
    public func applyBatch(sourceID: String, expected: UInt64, new: UInt64, operations: PackedMutations, copyCursor: [UInt8]? = nil,
                           completion: @escaping @Sendable (Result<BatchOutcome, any Error>) -> Void) {
        writer.submit(orElse: { completion(.failure(StoreError.closed)) }) { [self] in
            completion(Result {
                try writeNow {
                    try $0.applyBatch(sourceID: sourceID, expected: expected, new: new, operations: operations, copyCursor: copyCursor,
                                      now: wallClockNanoseconds())
                }
            })
        }
    }

    /// Applies conditional writes (see `StoreTransaction.applyWrites`) in one durable write
    /// transaction on the writer thread.
    public func applyWrites(sourceID: String, expected: UInt64, new: UInt64, writes: [ConditionalWrite],
                            now: UInt64 = wallClockNanoseconds()) async throws -> WritesOutcome {
        try await write { try $0.applyWrites(sourceID: sourceID, expected: expected, new: new, writes: writes, now: now) }
    }

    /// The source's unfinished initial copy's cursor, if a copy is in progress.
    public func copyCursor(sourceID: String) async throws -> [UInt8]? { try await read { try $0.copyCursor(sourceID: sourceID) } }

    /// See `StoreTransaction.setDescriptor`.
    public func setDescriptor(sourceID: String, descriptor: String, replace: Bool) async throws -> StoreTransaction.DescriptorOutcome {
        try await write { try $0.setDescriptor(sourceID: sourceID, descriptor: descriptor, replace: replace) }
    }

    /// Every source's recorded descriptor.
    public func descriptors() async throws -> [String: String] { try await read { try $0.descriptors() } }

    /// The source's recorded descriptor, nil when none is.
    public func descriptor(sourceID: String) async throws -> String? {
        try Store.validate(sourceID: sourceID)
        return try await read { try $0.descriptor(sourceID: sourceID) }
    }
}
