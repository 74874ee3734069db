import QSBytes
import QSModel

/// What a batch would do at the store's head, worked out by the store's own code and
/// rolled back: a root cluster's member commits it through etcd before anything is written.
public struct Prepared<Outcome: CASOutcome>: Sendable, Equatable {
    /// The head the batch was prepared at (the entry, if any, follows it).
    public var base: Head
    /// The batch's outcome at `base`: a conflict when the local checkpoint differs.
    public var outcome: Outcome
    /// The log entry a single root at `base` would append (nil when nothing changed), with
    /// its index and chained hash.
    public var entry: StoredEntry?
    /// The head after the entry (`base` when there is none).
    public var head: Head
}

public typealias PreparedBatch = Prepared<BatchOutcome>
public typealias PreparedWrites = Prepared<WritesOutcome>

/// The outcome of a compare-and-swap write (a batch, conditional writes).
public protocol CASOutcome: Sendable, Equatable {
    /// The source's checkpoint when it was not the expected position; nil when applied.
    var conflictPosition: UInt64? { get }
    /// The appended entry's index when applied (nil: nothing changed, or a conflict).
    var entryIndex: UInt64? { get }
    static func conflict(at position: UInt64) -> Self
}

extension BatchOutcome: CASOutcome {
    public var conflictPosition: UInt64? {
        if case let .conflict(current) = self { return current }
        return nil
    }

    public var entryIndex: UInt64? {
        if case let .applied(index, _, _) = self { return index }
        return nil
    }

    public static func conflict(at position: UInt64) -> BatchOutcome { .conflict(current: position) }
}

extension WritesOutcome: CASOutcome {
    public var conflictPosition: UInt64? {
        if case let .conflict(current) = self { return current }
        return nil
    }

    public var entryIndex: UInt64? {
        if case let .written(index, _) = self { return index }
        return nil
    }

    public static func conflict(at position: UInt64) -> WritesOutcome { .conflict(current: position) }
}

/// Carries what a prepared write found out of the write transaction it rolls back.
private struct RolledBack<Value: Sendable>: Error {
    var value: Value
}

extension Head {
    /// `index:u64 ‖ hash(32) ‖ commitTimeNs:u64`, as the store keeps it.
    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 48)
        w.writeU64(index)
        w.writeBytes(hash)
        w.writeU64(commitTimeNs)
        return w.bytes
    }
}

extension StoreTransaction {
    /// Sets a source's checkpoint as a root cluster committed it (a batch whose operations
    /// were all identical writes moves the checkpoint without a log entry).
    public func setCheckpoint(sourceID: String, position: UInt64) throws {
        try requireWritable()
        try Store.validate(sourceID: sourceID)
        try txn.put(meta, Store.checkpointPrefix + Array(sourceID.utf8), Store.encodeU64(position))
    }
}

extension Store {
    /// Works out what `applyBatch` would write at the current head — the entry's bytes,
    /// index and chained hash, exactly as a single root's — in a write transaction that is
    /// rolled back: nothing is written.
    public func prepareBatch(sourceID: String, expected: UInt64, new: UInt64, operations: PackedMutations,
                             now: UInt64 = wallClockNanoseconds()) async throws -> PreparedBatch {
        try await prepare { try $0.applyBatch(sourceID: sourceID, expected: expected, new: new, operations: operations, now: now) }
    }

    /// Works out what `applyWrites` would write at the current head (each conditional write
    /// decided against the state at that head), rolled back like `prepareBatch`.
    public func prepareWrites(sourceID: String, expected: UInt64, new: UInt64, writes: [ConditionalWrite],
                              now: UInt64 = wallClockNanoseconds()) async throws -> PreparedWrites {
        try await prepare { try $0.applyWrites(sourceID: sourceID, expected: expected, new: new, writes: writes, now: now) }
    }

    /// Works out one step of the expiry purge (`purgeExpired`) at the current head, rolled
    /// back like `prepareBatch`: the deletes are a batch of `sourceID` from `expected` to
    /// `expected + 1`, whose entry (nil when nothing expired) a cluster member commits
    /// through etcd. A conflict when the local checkpoint is not `expected`.
    public func preparePurge(after: [UInt8]?, scanLimit: Int, maxDeletes: Int, now: UInt64, sourceID: String,
                             expected: UInt64) async throws -> (prepared: PreparedBatch, step: StoreTransaction.PurgeStep) {
        try await rolledBack { txn in
            let base = try txn.head()
            let cp = try txn.checkpoint(sourceID: sourceID) ?? 0
            guard cp == expected else {
                return (Prepared(base: base, outcome: .conflict(current: cp), entry: nil, head: base),
                        StoreTransaction.PurgeStep(purged: 0, logIndex: nil, next: after))
            }
            let step = try txn.purgeExpired(after: after, scanLimit: scanLimit, maxDeletes: maxDeletes, now: now, sourceID: sourceID)
            guard let index = step.logIndex else {
                return (Prepared(base: base, outcome: .applied(logIndex: nil, kept: 0, dropped: 0), entry: nil, head: base), step)
            }
            let entry = try txn.entries(from: index, count: 1).first
            guard entry?.index == index else { throw StoreError.corrupt("the entry just appended at \(index) is not there") }
            return (Prepared(base: base, outcome: .applied(logIndex: index, kept: step.purged, dropped: 0), entry: entry,
                             head: try txn.head()), step)
        }
    }

    /// Works out what `setDescriptor` would do at the current head, rolled back like
    /// `prepareBatch`: the outcome, and when it records, the version-3 entry a root cluster
    /// member commits through etcd with the heads before and after it.
    public func prepareDescriptor(sourceID: String, descriptor: String, replace: Bool,
                                  now: UInt64 = wallClockNanoseconds()) async throws -> (base: Head, outcome: StoreTransaction.DescriptorOutcome, entry: StoredEntry?, head: Head) {
        try await rolledBack { txn in
            let base = try txn.head()
            let outcome = try txn.setDescriptor(sourceID: sourceID, descriptor: descriptor, replace: replace, now: now)
            guard case let .recorded(index, _) = outcome else { return (base, outcome, nil, base) }
            let entry = try txn.entries(from: index, count: 1).first
            guard entry?.index == index else { throw StoreError.corrupt("the entry just appended at \(index) is not there") }
            return (base, outcome, entry, try txn.head())
        }
    }

    private func prepare<Outcome: CASOutcome>(_ apply: @escaping @Sendable (borrowing StoreTransaction) throws -> Outcome) async throws -> Prepared<Outcome> {
        try await rolledBack { txn in
            let base = try txn.head()
            let outcome = try apply(txn)
            var entry: StoredEntry?
            if let index = outcome.entryIndex {
                entry = try txn.entries(from: index, count: 1).first
                guard entry?.index == index else { throw StoreError.corrupt("the entry just appended at \(index) is not there") }
            }
            return Prepared(base: base, outcome: outcome, entry: entry, head: try txn.head())
        }
    }

    /// Checks a compatible append at the current head with `appendEntries` (each entry must
    /// follow the head, continue its hash chain and decode), rolled back: returns the head
    /// it follows and the head after it. Throws `AppendError` as `appendEntries` does.
    public func prepareAppend(_ entries: [StoredEntry]) async throws -> (base: Head, head: Head) {
        try await rolledBack { txn in
            let base = try txn.head()
            return (base, try txn.appendEntries(entries))
        }
    }

    /// Runs `body` in a write transaction that is always rolled back, and returns its value.
    private func rolledBack<Value: Sendable>(_ body: @escaping @Sendable (borrowing StoreTransaction) throws -> Value) async throws -> Value {
        do {
            _ = try await write { txn -> Int in throw RolledBack(value: try body(txn)) }
            throw StoreError.corrupt("a prepared write was committed")
        } catch let r as RolledBack<Value> {
            return r.value
        }
    }

    /// Applies what a root cluster committed: `entries` must follow the head and continue
    /// its hash chain (see `appendEntries`); then the checkpoints are set, and the cluster's
    /// write role when it is given. One durable transaction; returns the new head.
    @discardableResult
    public func applyCommitted(entries: [StoredEntry], checkpoints: [String: UInt64], role: WriteRole? = nil) async throws -> Head {
        try await write { txn in
            let head = entries.isEmpty ? try txn.head() : try txn.appendEntries(entries)
            for (sid, cp) in checkpoints { try txn.setCheckpoint(sourceID: sid, position: cp) }
            if let role, try txn.writeRole() != role { try txn.setWriteRole(role) }
            return head
        }
    }
}
