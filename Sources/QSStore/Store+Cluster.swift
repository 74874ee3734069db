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

/// Carries a prepared write out of the write transaction it rolls back.
private struct RolledBack<Outcome: CASOutcome>: Error {
    var prepared: Prepared<Outcome>
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
    public func prepareBatch(sourceID: String, expected: UInt64, new: UInt64, operations: [Mutation],
                             now: UInt64 = wallClockNanoseconds()) async throws -> PreparedBatch {
        try await prepare { try $0.applyBatch(sourceID: sourceID, expected: expected, new: new, operations: operations, now: now) }
    }

    /// Works out what `applyWrites` would write at the current head (each conditional write
    /// decided against the state at that head), rolled back like `prepareBatch`.
    public func prepareWrites(sourceID: String, expected: UInt64, new: UInt64, writes: [ConditionalWrite],
                              now: UInt64 = wallClockNanoseconds()) async throws -> PreparedWrites {
        try await prepare { try $0.applyWrites(sourceID: sourceID, expected: expected, new: new, writes: writes, now: now) }
    }

    private func prepare<Outcome: CASOutcome>(_ apply: @escaping @Sendable (borrowing StoreTransaction) throws -> Outcome) async throws -> Prepared<Outcome> {
        do {
            _ = try await write { txn -> Int in
                let base = try txn.head()
                let outcome = try apply(txn)
                var entry: StoredEntry?
                if let index = outcome.entryIndex {
                    entry = try txn.entries(from: index, count: 1).first
                    guard entry?.index == index else { throw StoreError.corrupt("the entry just appended at \(index) is not there") }
                }
                throw RolledBack(prepared: Prepared(base: base, outcome: outcome, entry: entry, head: try txn.head()))
            }
            throw StoreError.corrupt("a prepared batch was committed")
        } catch let r as RolledBack<Outcome> {
            return r.prepared
        }
    }

    /// Applies what a root cluster committed: `entries` must follow the head and continue
    /// its hash chain (see `appendEntries`); then the checkpoints are set. One durable
    /// transaction; returns the new head.
    @discardableResult
    public func applyCommitted(entries: [StoredEntry], checkpoints: [String: UInt64]) async throws -> Head {
        try await write { txn in
            let head = entries.isEmpty ? try txn.head() : try txn.appendEntries(entries)
            for (sid, cp) in checkpoints { try txn.setCheckpoint(sourceID: sid, position: cp) }
            return head
        }
    }
}
