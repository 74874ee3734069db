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
        var out: [UInt8] = []
        BE.append(sid, 2, to: &out)
        BE.append(db, 2, to: &out)
        switch operation {
        case .set(let key, let value, let expiration):
            out.append(OpCode.set)
            VarNum.encode(UInt64(key.count), into: &out)
            VarNum.encode(UInt64(value.count + Self.expirationWidth), into: &out)
            out.append(contentsOf: key)
            BE.append(UInt64(clamping: max(0, min(expiration, KTExpiration.never))), 5, to: &out)
            out.append(contentsOf: value)
        case .remove(let key):
            out.append(OpCode.remove)
            VarNum.encode(UInt64(key.count), into: &out)
            out.append(contentsOf: key)
        case .clear:
            out.append(OpCode.clear)
        }
        return out
    }

    /// Decodes a whole message.
    public init<C: Collection>(decoding bytes: C) throws(KTFormatError) where C.Element == UInt8 {
        let b = ArraySlice(bytes)
        guard b.count >= 5,
              let sid = BE.read(b, at: 0, width: 2),
              let db = BE.read(b, at: 2, width: 2)
        else { throw .truncated(what: "update message", offset: b.count) }
        self.sid = UInt16(sid)
        self.db = UInt16(db)
        let op = b[b.startIndex + 4]
        var pos = b.startIndex + 5
        func varnum(_ what: String) throws(KTFormatError) -> Int {
            guard let (v, n) = VarNum.decode(b[pos...]), v <= UInt64(Int32.max) else {
                throw .truncated(what: what, offset: pos - b.startIndex)
            }
            pos += n
            return Int(v)
        }
        switch op {
        case OpCode.set:
            let ksiz = try varnum("key size")
            let vsiz = try varnum("value size")
            guard vsiz >= Self.expirationWidth else {
                throw .invalid(what: "set value shorter than its expiration time", offset: pos - b.startIndex)
            }
            guard pos + ksiz + vsiz == b.endIndex else {
                throw .invalid(what: "set message length", offset: pos - b.startIndex)
            }
            let key = Array(b[pos..<(pos + ksiz)])
            pos += ksiz
            let xt = BE.read(b[pos...], at: 0, width: 5) ?? 0
            let value = Array(b[(pos + 5)..<(pos + vsiz)])
            operation = .set(key: key, value: value, expiration: Int64(xt))
        case OpCode.remove:
            let ksiz = try varnum("key size")
            guard pos + ksiz == b.endIndex else {
                throw .invalid(what: "remove message length", offset: pos - b.startIndex)
            }
            operation = .remove(key: Array(b[pos..<(pos + ksiz)]))
        case OpCode.clear:
            guard pos == b.endIndex else {
                throw .invalid(what: "clear message length", offset: pos - b.startIndex)
            }
            operation = .clear
        default:
            throw .badMagic(expected: "update operation 0xA1/0xA2/0xA5", found: op, offset: 4)
        }
    }
}
