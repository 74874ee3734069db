import KTFormats

/// A cursor of one session (`CUR` parameter), keyed by connection and cursor number.
struct CursorID: Hashable, Sendable {
    var connection: UInt64
    var number: Int64
}

/// A cursor position: the key it stands on, or none.
///
/// As in KT's TimedDB, a cursor stands on stored records whether they have expired or not;
/// reading skips expired ones in the direction of the last move (`backward` after
/// `jump_back`/`step_back`, forward after `jump`/`step`). A record removed under a cursor
/// moves it to the next key, as Kyoto Cabinet's cursors escape forwards.
struct Cursor: Sendable {
    var db: Int
    var key: [UInt8]?
    var backward = false
}

extension Store {
    /// The index in the sorted keys of the first key ≥ `key`, or > `key` when `strictly`.
    private mutating func boundary(db: Int, _ key: [UInt8], strictly: Bool) -> Int {
        let keys = databases[db].sortedKeys()
        var low = 0
        var high = keys.count
        while low < high {
            let mid = (low + high) / 2
            let before = strictly ? !key.lexicographicallyPrecedes(keys[mid]) : keys[mid].lexicographicallyPrecedes(key)
            if before { low = mid + 1 } else { high = mid }
        }
        return low
    }

    /// The stored key after `key` (strictly), expired or not.
    mutating func storedKey(db: Int, after key: [UInt8]) -> [UInt8]? {
        let i = boundary(db: db, key, strictly: true)
        let keys = databases[db].sortedKeys()
        return i < keys.count ? keys[i] : nil
    }

    /// The first stored key at or after `key`.
    private mutating func storedKey(db: Int, atOrAfter key: [UInt8]) -> [UInt8]? {
        let i = boundary(db: db, key, strictly: false)
        let keys = databases[db].sortedKeys()
        return i < keys.count ? keys[i] : nil
    }

    /// The last stored key at or before `key` (or strictly before).
    private mutating func storedKey(db: Int, before key: [UInt8], orAt: Bool) -> [UInt8]? {
        let i = boundary(db: db, key, strictly: orAt)
        return i > 0 ? databases[db].sortedKeys()[i - 1] : nil
    }

    /// Removes a record; cursors standing on it move to the next key.
    mutating func deleteRecord(db: Int, key: [UInt8]) {
        guard databases[db].raw(key) != nil else { return }
        if cursors.values.contains(where: { $0.db == db && $0.key == key }) {
            let next = storedKey(db: db, after: key)
            for (id, c) in cursors where c.db == db && c.key == key { cursors[id]?.key = next }
        }
        databases[db].delete(key)
    }

    /// `cur_jump`: the first record, or on a tree the first at or after `key`; a hash
    /// database needs the key itself.
    mutating func cursorJump(_ id: CursorID, key: [UInt8]?) throws(KTDBError) {
        guard var c = cursors[id] else { throw .noRecord }
        let db = c.db
        if let key {
            if databases[db].kind.ordered {
                c.key = storedKey(db: db, atOrAfter: key)
            } else {
                c.key = databases[db].raw(key) != nil ? key : nil
            }
        } else {
            c.key = databases[db].sortedKeys().first
        }
        if c.key != nil { c.backward = false }
        cursors[id] = c
        if c.key == nil { throw .noRecord }
    }

    /// `cur_jump_back`: the last record, or the last at or before `key`, on a tree. Hash
    /// types answer `not implemented`; a prototype hash (`-`) first says `no record` when
    /// empty, and stands on `key` itself when it is there, as Kyoto Cabinet's does.
    mutating func cursorJumpBack(_ id: CursorID, key: [UInt8]?) throws(KTDBError) {
        guard var c = cursors[id] else { throw .noRecord }
        let db = c.db
        switch databases[db].kind {
        case let kind where kind.ordered:
            c.key = key.map { storedKey(db: db, before: $0, orAt: true) } ?? databases[db].sortedKeys().last
        case .prototypeHash:
            if let key, databases[db].raw(key) != nil {
                c.key = key
            } else {
                c.key = nil
                cursors[id] = c
                throw databases[db].records.isEmpty ? .noRecord : .notImplemented
            }
        default:
            throw .notImplemented
        }
        if c.key != nil { c.backward = true }
        cursors[id] = c
        if c.key == nil { throw .noRecord }
    }

    /// `cur_step`: the next stored record.
    mutating func cursorStep(_ id: CursorID) throws(KTDBError) {
        guard var c = cursors[id], let key = c.key else { throw .noRecord }
        c.key = storedKey(db: c.db, after: key)
        if c.key != nil { c.backward = false }
        cursors[id] = c
        if c.key == nil { throw .noRecord }
    }

    /// `cur_step_back`: the previous stored record, on a tree. A prototype tree (`+`) steps
    /// from nowhere onto the last record; a prototype hash says `no record` at its first
    /// record and `not implemented` elsewhere; other hash types `not implemented`.
    mutating func cursorStepBack(_ id: CursorID) throws(KTDBError) {
        guard var c = cursors[id] else { throw .noRecord }
        let db = c.db
        let kind = databases[db].kind
        switch kind {
        case _ where kind.ordered:
            if let key = c.key {
                c.key = storedKey(db: db, before: key, orAt: false)
            } else if kind == .prototypeTree {
                c.key = databases[db].sortedKeys().last
            }
        case .prototypeHash:
            let first = databases[db].sortedKeys().first
            let atBeginning = first == nil || c.key == first
            c.key = nil
            cursors[id] = c
            throw atBeginning ? .noRecord : .notImplemented
        default:
            throw .notImplemented
        }
        if c.key != nil { c.backward = true }
        cursors[id] = c
        if c.key == nil { throw .noRecord }
    }

    /// The live record under the cursor: expired records are skipped in the direction of
    /// the cursor's last move.
    mutating func cursorCurrent(_ id: CursorID) throws(KTDBError) -> (key: [UInt8], record: KTRecord) {
        while true {
            guard let c = cursors[id], let key = c.key, let r = databases[c.db].raw(key) else { throw .noRecord }
            if !KTExpiration.isExpired(r.expiration, at: now) { return (key, r) }
            if c.backward { try cursorStepBack(id) } else { try cursorStep(id) }
        }
    }

    /// Whether the cursor's `step` (and the move after a remove) goes backwards: after a
    /// backward move on a B+ tree of Kyoto Cabinet's (`.kct`, `%`, `.kcf`), whose cursor
    /// keeps the direction of its last jump or step (`PlantDB::Cursor::back_`). A prototype
    /// tree (`+`, a `std::map`) and the hash types always step forwards.
    func movesBackward(_ c: Cursor) -> Bool {
        guard c.backward else { return false }
        switch databases[c.db].kind {
        case .tree, .grass, .forest: return true
        default: return false
        }
    }

    /// The key a cursor moves to from `key` when it steps (or its record is removed).
    mutating func nextKey(_ c: Cursor, from key: [UInt8]) -> [UInt8]? {
        movesBackward(c) ? storedKey(db: c.db, before: key, orAt: false) : storedKey(db: c.db, after: key)
    }

    /// The live record under the cursor; with `step`, the cursor then moves on: forwards,
    /// or backwards after a backward move on a B+ tree (`movesBackward`), skipping expired
    /// records the same way.
    mutating func cursorGet(_ id: CursorID, step: Bool) throws(KTDBError) -> (key: [UInt8], record: KTRecord) {
        guard step else { return try cursorCurrent(id) }
        while true {
            guard var c = cursors[id], let key = c.key, let r = databases[c.db].raw(key) else { throw .noRecord }
            c.key = nextKey(c, from: key)
            cursors[id] = c
            if !KTExpiration.isExpired(r.expiration, at: now) { return (key, r) }
        }
    }

    mutating func cursorSetValue(_ id: CursorID, value: [UInt8], xt: Int64?, step: Bool) throws(KTDBError) {
        let (key, _) = try cursorGet(id, step: step)
        guard let c = cursors[id] else { throw .noRecord }
        store(db: c.db, key: key, value: value, xt: xt)
    }

    /// `cur_remove` and `cur_seize`: removes the live record under the cursor, which moves
    /// on to the next key (the previous one after a backward move on a B+ tree).
    mutating func cursorRemove(_ id: CursorID) throws(KTDBError) -> (key: [UInt8], record: KTRecord) {
        let (key, record) = try cursorCurrent(id)
        guard var c = cursors[id] else { throw .noRecord }
        if movesBackward(c) {
            c.key = nextKey(c, from: key)
            cursors[id] = c
        }
        deleteRecord(db: c.db, key: key)
        logUpdate(db: c.db, .remove(key: key))
        return (key, record)
    }

    mutating func closeCursors(connection: UInt64) {
        cursors = cursors.filter { $0.key.connection != connection }
    }
}
