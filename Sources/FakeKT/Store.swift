import KTFormats

/// The server's data: the databases, the update log held in memory (the replication feed
/// reads it), the timestamp clock and the cursors of open sessions.
///
/// A value type with no locking of its own; `FakeKTCore` keeps it behind one lock, so every
/// operation and its log records are atomic and in timestamp order.
struct Store: Sendable {
    var databases: [Database]
    var names: [String: Int]
    var clock: KTClock
    /// Every update, in timestamp order.
    private(set) var log: [ULogFile.Record] = []
    /// Records appended since the last `takePending()`, for the ulog file writer.
    private var pending: [ULogFile.Record] = []
    let sid: UInt16
    /// Current time in milliseconds since the epoch, for this operation.
    var nowMillis: UInt64 = 0
    var cursors: [CursorID: Cursor] = [:]

    var now: Int64 { Int64(nowMillis / 1000) }

    /// Opens the databases ktserver's arguments name; an argument of no known type is refused.
    init(databaseArguments: [String], sid: UInt16) throws(Database.UnknownType) {
        var databases: [Database] = []
        for argument in databaseArguments { databases.append(try Database(argument: argument)) }
        self.databases = databases
        // `DB=name` selects by the last path component; of two with one name, the later wins,
        // as in ktserver's map.
        var names: [String: Int] = [:]
        for (i, db) in databases.enumerated() { names[db.name] = i }
        self.names = names
        self.clock = KTClock()
        self.sid = sid
    }

    /// Resolves KT's `DB` parameter: empty or absent is 0, digits an index, else a name.
    func databaseIndex(_ parameter: [UInt8]?) -> Int? {
        guard let parameter, let first = parameter.first else { return databases.isEmpty ? nil : 0 }
        let index: Int?
        if first >= 0x30, first <= 0x39 {
            index = Int(KTExpiration.parseInteger(parameter))
        } else {
            index = names[String(decoding: parameter, as: UTF8.self)]
        }
        guard let index, index >= 0, index < databases.count else { return nil }
        return index
    }

    // MARK: logging

    mutating func logUpdate(db: Int, _ operation: KTUpdateMessage.Change) {
        let message = KTUpdateMessage(sid: sid, db: UInt16(truncatingIfNeeded: db), operation: operation)
        let record = ULogFile.Record(timestamp: clock.next(nowMillis: nowMillis), message: message.encoded())
        log.append(record)
        pending.append(record)
    }

    /// Adds records read from existing ulog files: applies them and resumes the clock.
    mutating func restore(_ records: [ULogFile.Record], newestTimestamp: UInt64) {
        for record in records {
            log.append(record)
            guard let message = try? record.decodedMessage() else { continue }
            let i = Int(message.db)
            guard i < databases.count else { continue }
            switch message.operation {
            case .set(let key, let value, let xt): databases[i].put(key, KTRecord(value: value, expiration: xt))
            case .remove(let key): databases[i].delete(key)
            case .clear: databases[i].removeAll()
            }
        }
        clock = KTClock(resumingAfter: max(newestTimestamp, log.last?.timestamp ?? 0))
    }

    mutating func takePending() -> [ULogFile.Record] {
        defer { pending.removeAll(keepingCapacity: true) }
        return pending
    }

    /// The index of the first log record with a timestamp greater than `timestamp`.
    func logIndex(after timestamp: UInt64) -> Int {
        var low = 0
        var high = log.count
        while low < high {
            let mid = (low + high) / 2
            if log[mid].timestamp <= timestamp { low = mid + 1 } else { high = mid }
        }
        return low
    }

    func logSlice(from index: Int, limit: Int) -> ArraySlice<ULogFile.Record> {
        guard index < log.count else { return [] }
        return log[index..<min(log.count, index + limit)]
    }

    // MARK: writes (each logs what KT logs)

    mutating func store(db: Int, key: [UInt8], value: [UInt8], xt: Int64?) {
        let stored = KTExpiration.stored(requested: xt, now: now)
        databases[db].put(key, KTRecord(value: value, expiration: stored))
        logUpdate(db: db, .set(key: key, value: value, expiration: stored))
    }

    mutating func set(db: Int, key: [UInt8], value: [UInt8], xt: Int64?) {
        store(db: db, key: key, value: value, xt: xt)
    }

    mutating func add(db: Int, key: [UInt8], value: [UInt8], xt: Int64?) throws(KTDBError) {
        if databases[db].live(key, now: now) != nil { throw .duplicateRecord }
        store(db: db, key: key, value: value, xt: xt)
    }

    mutating func replace(db: Int, key: [UInt8], value: [UInt8], xt: Int64?) throws(KTDBError) {
        guard databases[db].live(key, now: now) != nil else { throw .noRecord }
        store(db: db, key: key, value: value, xt: xt)
    }

    mutating func append(db: Int, key: [UInt8], value: [UInt8], xt: Int64?) {
        let old = databases[db].live(key, now: now)?.value ?? []
        store(db: db, key: key, value: old + value, xt: xt)
    }

    mutating func increment(db: Int, key: [UInt8], num: Int64, orig: Int64, xt: Int64?) throws(KTDBError) -> Int64 {
        var result = num
        if let r = databases[db].live(key, now: now) {
            guard r.value.count == 8 else { throw .logic }
            if orig != Int64.max {
                let old = Int64(bitPattern: r.value.reduce(0) { $0 << 8 | UInt64($1) })
                if num == 0 { return old }
                result = num &+ old
            }
        } else {
            if orig == Int64.min { throw .logic }
            if orig != Int64.max { result = num &+ orig }
        }
        var bytes: [UInt8] = []
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: UInt64(bitPattern: result) >> UInt64(shift))) }
        store(db: db, key: key, value: bytes, xt: xt)
        return result
    }

    /// Kyoto Cabinet keeps a double as two big-endian 64-bit integers: the integral part and
    /// the fraction times 10^15.
    static let decimalUnit = 1_000_000_000_000_000.0

    static func decodeDouble(_ v: [UInt8]) -> Double? {
        guard v.count == 16 else { return nil }
        let i = Int64(bitPattern: v[0..<8].reduce(0) { $0 << 8 | UInt64($1) })
        let f = Int64(bitPattern: v[8..<16].reduce(0) { $0 << 8 | UInt64($1) })
        return Double(i) + Double(f) / decimalUnit
    }

    static func encodeDouble(_ d: Double) -> [UInt8] {
        let integral = d.rounded(.towardZero)
        let fraction = ((d - integral) * decimalUnit).rounded(.towardZero)
        var out: [UInt8] = []
        for part in [Int64(integral), Int64(fraction)] {
            for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: UInt64(bitPattern: part) >> UInt64(shift))) }
        }
        return out
    }

    mutating func incrementDouble(db: Int, key: [UInt8], num: Double, orig: Double, xt: Int64?) throws(KTDBError) -> Double {
        var result = num
        if let r = databases[db].live(key, now: now) {
            guard let old = Self.decodeDouble(r.value) else { throw .logic }
            if orig != .infinity {
                if num == 0 { return old }
                result = num + old
            }
        } else {
            if orig == -.infinity { throw .logic }
            if orig != .infinity { result = num + orig }
        }
        store(db: db, key: key, value: Self.encodeDouble(result), xt: xt)
        return result
    }

    mutating func cas(db: Int, key: [UInt8], old: [UInt8]?, new: [UInt8]?, xt: Int64?) throws(KTDBError) {
        let current = databases[db].live(key, now: now)
        switch (current, old) {
        case (let r?, let o?) where r.value == o:
            if let new {
                store(db: db, key: key, value: new, xt: xt)
            } else {
                deleteRecord(db: db, key: key)
                logUpdate(db: db, .remove(key: key))
            }
        case (nil, nil):
            if let new { store(db: db, key: key, value: new, xt: xt) }
        default:
            throw .statusConflict
        }
    }

    /// Removes a record. KT logs the removal even when there is nothing to remove.
    mutating func remove(db: Int, key: [UInt8]) throws(KTDBError) {
        let existed = databases[db].live(key, now: now) != nil
        deleteRecord(db: db, key: key)
        logUpdate(db: db, .remove(key: key))
        if !existed { throw .noRecord }
    }

    mutating func clear(db: Int) {
        databases[db].removeAll()
        cursors = cursors.filter { $0.value.db != db }
        logUpdate(db: db, .clear)
    }

    // MARK: reads

    func get(db: Int, key: [UInt8]) throws(KTDBError) -> KTRecord {
        guard let r = databases[db].live(key, now: now) else { throw .noRecord }
        return r
    }

    mutating func seize(db: Int, key: [UInt8]) throws(KTDBError) -> KTRecord {
        guard let r = databases[db].live(key, now: now) else { throw .noRecord }
        deleteRecord(db: db, key: key)
        logUpdate(db: db, .remove(key: key))
        return r
    }

    mutating func matchPrefix(db: Int, prefix: [UInt8], max: Int64) -> [[UInt8]] {
        var out: [[UInt8]] = []
        let now = self.now
        for key in databases[db].sortedKeys() where key.starts(with: prefix) {
            if max >= 0 && out.count >= max { break }
            if databases[db].live(key, now: now) != nil { out.append(key) }
        }
        return out
    }

    mutating func matchKeys(db: Int, max: Int64, where predicate: ([UInt8]) -> Bool) -> [[UInt8]] {
        var out: [[UInt8]] = []
        let now = self.now
        for key in databases[db].sortedKeys() where predicate(key) {
            if max >= 0 && out.count >= max { break }
            if databases[db].live(key, now: now) != nil { out.append(key) }
        }
        return out
    }
}
