import KTFormats

/// A cursor of one session (`CUR` parameter), keyed by connection and cursor number.
struct CursorID: Hashable, Sendable {
    var connection: UInt64
    var number: Int64
}

/// A cursor position: the key it stands on, or none.
struct Cursor: Sendable {
    var db: Int
    var key: [UInt8]?
}

extension Store {
    /// The first live key at or after `key` (or the first key).
    mutating func liveKey(db: Int, atOrAfter key: [UInt8]?, strictlyAfter: Bool = false) -> [UInt8]? {
        let keys = databases[db].sortedKeys()
        var low = 0
        if let key {
            var high = keys.count
            while low < high {
                let mid = (low + high) / 2
                let before = strictlyAfter ? !key.lexicographicallyPrecedes(keys[mid]) : keys[mid].lexicographicallyPrecedes(key)
                if before { low = mid + 1 } else { high = mid }
            }
        }
        for i in low..<keys.count where databases[db].live(keys[i], now: now) != nil { return keys[i] }
        return nil
    }

    /// The last live key at or before `key` (or the last key).
    mutating func liveKey(db: Int, atOrBefore key: [UInt8]?, strictlyBefore: Bool = false) -> [UInt8]? {
        let keys = databases[db].sortedKeys()
        var high = keys.count
        if let key {
            var low = 0
            while low < high {
                let mid = (low + high) / 2
                let atOrBefore = strictlyBefore ? keys[mid].lexicographicallyPrecedes(key) : !key.lexicographicallyPrecedes(keys[mid])
                if atOrBefore { low = mid + 1 } else { high = mid }
            }
        }
        var i = high - 1
        while i >= 0 {
            if databases[db].live(keys[i], now: now) != nil { return keys[i] }
            i -= 1
        }
        return nil
    }

    mutating func cursorJump(_ id: CursorID, key: [UInt8]?) throws(KTDBError) {
        guard var c = cursors[id] else { throw .noRecord }
        c.key = liveKey(db: c.db, atOrAfter: key)
        cursors[id] = c
        if c.key == nil { throw .noRecord }
    }

    mutating func cursorJumpBack(_ id: CursorID, key: [UInt8]?) throws(KTDBError) {
        guard var c = cursors[id] else { throw .noRecord }
        guard databases[c.db].kind == .tree else { throw .notImplemented }
        c.key = liveKey(db: c.db, atOrBefore: key)
        cursors[id] = c
        if c.key == nil { throw .noRecord }
    }

    /// The record under the cursor, moving onto the next live key if its own went away.
    mutating func cursorCurrent(_ id: CursorID) throws(KTDBError) -> (key: [UInt8], record: KTRecord) {
        guard var c = cursors[id], let key = c.key else { throw .noRecord }
        if let r = databases[c.db].live(key, now: now) { return (key, r) }
        c.key = liveKey(db: c.db, atOrAfter: key, strictlyAfter: true)
        cursors[id] = c
        guard let k = c.key, let r = databases[c.db].live(k, now: now) else { throw .noRecord }
        return (k, r)
    }

    mutating func cursorStep(_ id: CursorID) throws(KTDBError) {
        let (key, _) = try cursorCurrent(id)
        guard var c = cursors[id] else { throw .noRecord }
        c.key = liveKey(db: c.db, atOrAfter: key, strictlyAfter: true)
        cursors[id] = c
        if c.key == nil { throw .noRecord }
    }

    mutating func cursorStepBack(_ id: CursorID) throws(KTDBError) {
        guard var c = cursors[id] else { throw .noRecord }
        guard databases[c.db].kind == .tree else { throw .notImplemented }
        let (key, _) = try cursorCurrent(id)
        c.key = liveKey(db: c.db, atOrBefore: key, strictlyBefore: true)
        cursors[id] = c
        if c.key == nil { throw .noRecord }
    }

    mutating func cursorGet(_ id: CursorID, step: Bool) throws(KTDBError) -> (key: [UInt8], record: KTRecord) {
        let current = try cursorCurrent(id)
        if step { try? cursorStep(id) }
        return current
    }

    mutating func cursorSetValue(_ id: CursorID, value: [UInt8], xt: Int64?, step: Bool) throws(KTDBError) {
        let (key, _) = try cursorCurrent(id)
        guard let c = cursors[id] else { throw .noRecord }
        store(db: c.db, key: key, value: value, xt: xt)
        if step { try? cursorStep(id) }
    }

    mutating func cursorRemove(_ id: CursorID) throws(KTDBError) -> (key: [UInt8], record: KTRecord) {
        let (key, record) = try cursorCurrent(id)
        guard var c = cursors[id] else { throw .noRecord }
        databases[c.db].delete(key)
        logUpdate(db: c.db, .remove(key: key))
        c.key = liveKey(db: c.db, atOrAfter: key, strictlyAfter: true)
        cursors[id] = c
        return (key, record)
    }

    mutating func closeCursors(connection: UInt64) {
        cursors = cursors.filter { $0.key.connection != connection }
    }
}
