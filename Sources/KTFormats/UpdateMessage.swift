import QSBytes

/// One update-log message: `sid:u16 db:u16` then a Kyoto Cabinet update record.
///
/// - `0xA1` set: `varnum ksiz, varnum vsiz, key, value`; the stored value starts with a
///   5-byte big-endian expiration time (`0xFFFFFFFFFF` = never).
/// - `0xA2` remove: `varnum ksiz, key`.
/// - `0xA5` clear: nothing more.
public struct KTUpdateMessage: Sendable, Hashable {
    /// The operation a message carries.
    public enum Change: Sendable, Hashable {
        /// Set `key` to `value`, expiring at `expiration` (epoch seconds, 40 bits).
        case set(key: [UInt8], value: [UInt8], expiration: Int64)
        /// Remove `key`.
        case remove(key: [UInt8])
        /// Clear the database.
        case clear
    }

    /// Operation codes.
    public enum OpCode {
        public static let set: UInt8 = 0xA1
        public static let remove: UInt8 = 0xA2
        public static let clear: UInt8 = 0xA5
    }

    /// Width of the expiration prefix of a stored value.
    public static let expirationWidth = 5

    /// The server id of the server that made the change.
    public var sid: UInt16
    /// The database index.
    public var db: UInt16
    /// The change.
    public var operation: Change

    public init(sid: UInt16, db: UInt16, operation: Change) {
        self.sid = sid
        self.db = db
        self.operation = operation
    }

    /// The wire bytes of the message.
    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 16)
        w.writeU16(sid)
        w.writeU16(db)
        switch operation {
        case .set(let key, let value, let expiration):
            w.writeU8(OpCode.set)
            w.writeVarNum(UInt64(key.count))
            w.writeVarNum(UInt64(value.count + Self.expirationWidth))
            w.writeBytes(key)
            w.writeUInt(UInt64(clamping: max(0, min(expiration, KTExpiration.never))), width: Self.expirationWidth)
            w.writeBytes(value)
        case .remove(let key):
            w.writeU8(OpCode.remove)
            w.writeVarNum(UInt64(key.count))
            w.writeBytes(key)
        case .clear:
            w.writeU8(OpCode.clear)
        }
        return w.bytes
    }

    /// Decodes a whole message; offsets in errors count from its first byte.
    public init(decoding bytes: [UInt8]) throws(DecodeError) {
        if let set = Self.decodeSet(bytes) {
            self = set
            return
        }
        var r = ByteReader(bytes)
        sid = try r.readU16("update message sid")
        db = try r.readU16("update message db")
        let op = try r.readU8("update operation")
        func size(_ what: String) throws(DecodeError) -> Int {
            let at = r.offset
            let v = try r.readVarNum(what)
            guard v <= UInt64(Int32.max) else { throw DecodeError(offset: at, reason: "\(what) \(v) over 2^31") }
            return Int(v)
        }
        switch op {
        case OpCode.set:
            let ksiz = try size("key size")
            let vsiz = try size("value size")
            guard vsiz >= Self.expirationWidth else {
                throw DecodeError(offset: r.offset, reason: "invalid set value shorter than its expiration time")
            }
            guard ksiz + vsiz == r.remaining else {
                throw DecodeError(offset: r.offset, reason: "invalid set message length: \(ksiz + vsiz) bytes declared, \(r.remaining) present")
            }
            let key = try r.readBytes(ksiz, "key")
            let xt = try r.readUInt(width: Self.expirationWidth, "expiration time")
            let value = try r.readBytes(vsiz - Self.expirationWidth, "value")
            operation = .set(key: key, value: value, expiration: Int64(xt))
        case OpCode.remove:
            let ksiz = try size("key size")
            guard ksiz == r.remaining else {
                throw DecodeError(offset: r.offset, reason: "invalid remove message length: \(ksiz) bytes declared, \(r.remaining) present")
            }
            operation = .remove(key: try r.readBytes(ksiz, "key"))
        case OpCode.clear:
            try r.expectEnd("a clear message")
            operation = .clear
        default:
            throw .badMagic(op, expected: "update operation 0xA1/0xA2/0xA5", offset: 4)
        }
    }

    /// Decodes a whole message it takes, as `init(decoding:)` does. A well-formed set's
    /// value keeps the message's storage (its bytes moved to the front when the message is
    /// not shared): one array made for a set, its key, rather than two.
    public init(taking bytes: consuming [UInt8]) throws(DecodeError) {
        guard let set = Self.setLayout(bytes) else {
            try self.init(decoding: bytes)
            return
        }
        var value = consume bytes
        let key = Array(value[set.key])
        value.removeSubrange(0..<set.value)
        self.init(sid: set.sid, db: set.db, operation: .set(key: key, value: value, expiration: set.expiration))
    }

    /// A well-formed set message (the bulk of a backlog) read straight from its bytes; nil
    /// for anything else, which `init(decoding:)` then reads (and refuses) the general way.
    private static func decodeSet(_ bytes: [UInt8]) -> KTUpdateMessage? {
        guard let set = setLayout(bytes) else { return nil }
        return KTUpdateMessage(sid: set.sid, db: set.db,
                               operation: .set(key: Array(bytes[set.key]), value: Array(bytes[set.value...]), expiration: set.expiration))
    }

    /// Where a well-formed set message's parts are, in one pass over its bytes (nil for
    /// anything else): the key's range, the value's start (it runs to the end), the
    /// expiration time.
    private static func setLayout(_ bytes: [UInt8]) -> (sid: UInt16, db: UInt16, key: Range<Int>, value: Int, expiration: Int64)? {
        bytes.withUnsafeBufferPointer { p -> (sid: UInt16, db: UInt16, key: Range<Int>, value: Int, expiration: Int64)? in
            guard p.count >= 5, p[4] == OpCode.set else { return nil }
            var i = 5
            func varnum() -> Int? {
                var v = 0
                for _ in 0..<4 { // at most 28 bits: within the general path's 2^31 limit
                    guard i < p.count else { return nil }
                    let b = p[i]
                    i += 1
                    v = v << 7 | Int(b & 0x7F)
                    if b < 0x80 { return v }
                }
                return nil
            }
            guard let ksiz = varnum(), let vsiz = varnum(), vsiz >= expirationWidth, ksiz + vsiz == p.count - i else { return nil }
            let k = i, x = i + ksiz, v = x + expirationWidth
            var xt: UInt64 = 0
            for j in x..<v { xt = xt << 8 | UInt64(p[j]) }
            return (UInt16(p[0]) << 8 | UInt16(p[1]), UInt16(p[2]) << 8 | UInt16(p[3]), k..<x, v, Int64(xt))
        }
    }
}
