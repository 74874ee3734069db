import CLMDB

/// A read transaction kept for reuse by one thread: the read servers keep one per event
/// loop (`Store.readInline(in:)`), so a `get` costs a renew and a reset of an LMDB read
/// transaction instead of a begin (an allocation, the reader table's lock and a search
/// for a free slot, since the environment is opened `MDB_NOTLS`) and an abort (a free).
///
/// Between reads the transaction is reset: it holds a reader-table entry but no snapshot,
/// so it never keeps old pages from being reused, however long the slot stays idle. Each
/// read renews it and sees the newest committed state, as a fresh transaction would.
///
/// A slot is used by one thread at a time (its event loop); it is `Sendable` only so the
/// servers can hand it to that thread. A slot in use (a read inside a read) is not reused:
/// the inner read takes a transaction of its own. On RocksDB the slot holds nothing and
/// every read is a read as before.
public final class ReadSlot: @unchecked Sendable {
    let environment: LMDBEnvironment?
    var txn: OpaquePointer?
    var busy = false

    init(environment: LMDBEnvironment?) {
        self.environment = environment
    }

    deinit {
        if let txn { mdb_txn_abort(txn) }
    }
}

extension Store {
    /// A slot for `readInline(in:)`, for one thread at a time (see `ReadSlot`).
    public func makeReadSlot() -> ReadSlot {
        if case let .lmdb(e) = engine { return ReadSlot(environment: e.environment) }
        return ReadSlot(environment: nil)
    }

    /// `readInline` in the read transaction kept in `slot` (renewed before `body`, reset
    /// after it): for the read servers' hot path on their event loops. Call it from one
    /// thread at a time per slot; keep `body` bounded, as for `readInline`.
    @inline(__always)
    public func readInline<T>(in slot: ReadSlot, _ body: (borrowing StoreTransaction) throws -> T) throws -> T {
        guard case let .lmdb(e) = engine, !slot.busy, slot.environment === e.environment else { return try readNow(body) }
        slot.busy = true
        defer { slot.busy = false }
        return try e.environment.read(reusing: &slot.txn) { txn in
            try body(StoreTransaction(store: self, txn: EngineTransaction(handle: .lmdb(txn.txn, e.tables)), writable: false))
        }
    }
}

extension LMDBEnvironment {
    /// A slot for `read(in:)`: a read transaction kept and renewed, for one thread at a time
    /// (see `ReadSlot`).
    public func makeReadSlot() -> ReadSlot { ReadSlot(environment: self) }

    /// `read` in the transaction kept in `slot` (renewed before `body`, reset after it), as
    /// the read servers read through `Store.readInline(in:)`. `slot` must be this
    /// environment's, used by one thread at a time.
    public func read<T>(in slot: ReadSlot, _ body: (borrowing LMDBTransaction) throws -> T) throws -> T {
        precondition(slot.environment === self && !slot.busy, "a read slot is used by its own environment, one read at a time")
        slot.busy = true
        defer { slot.busy = false }
        return try read(reusing: &slot.txn, body)
    }
}
