import QSBytes

/// One write whose effect depends on the key's current record: what a KT producer asks
/// for (`set`, `add`, `replace`, `append`, `cas`, `increment`, `remove`). A root decides it
/// against its current state inside the write transaction that applies it (`evaluate`),
/// so the decision and the change are atomic; the log carries only the resulting plain
/// `Mutation`, so replicas and log readers see nothing new.
public struct ConditionalWrite: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// Store the value whatever is there.
        case set
        /// Store the value only when the key has no live record.
        case add
        /// Store the value only when the key has a live record.
        case replace
        /// Store the current value (empty when none) followed by the value.
        case append
        /// Compare and swap: the live record must be `old` (nil: no record); then store
        /// the value, or remove the record when `remove` is set.
        case cas(old: [UInt8]?, remove: Bool)
        /// KT's increment: the record is an 8-byte big-endian integer; add `by`. With no
        /// record, `origin` is the starting number; `Int64.min` means fail instead, and
        /// `Int64.max` means store `by` whatever is there (KT's `orig=try` / `orig=set`).
        case increment(by: Int64, origin: Int64)
        /// Remove the record; fails when there is none.
        case remove
    }

    public var kind: Kind
    public var key: [UInt8]
    /// The value to store (the appended bytes for `append`; unused by `increment`, `remove`).
    public var value: [UInt8]
    /// Absolute expiry (epoch seconds) of what is stored, nil for never.
    public var expiry: UInt64?

    public init(_ kind: Kind, key: [UInt8], value: [UInt8] = [], expiry: UInt64? = nil) {
        self.kind = kind
        self.key = key
        self.value = value
        self.expiry = expiry
    }

    /// What the write did.
    public enum Outcome: Sendable, Equatable {
        case done
        /// `increment` done: the number now stored.
        case number(Int64)
        /// `add` found a live record.
        case exists
        /// `replace`, `remove` or `increment` with `orig=try` found no live record.
        case missing
        /// `cas` found another record (or none, or one where none was expected).
        case mismatch
        /// `increment` found a record that is not an 8-byte number.
        case notANumber
    }

    /// Decides the write against `current`, the key's live record (nil when absent or
    /// expired): the mutation to apply (nil: none) and the outcome to report.
    public func evaluate(current: Record?) -> (Mutation?, Outcome) {
        let store = Mutation.set(key: key, value: value, expiry: expiry)
        switch kind {
        case .set:
            return (store, .done)
        case .add:
            return current == nil ? (store, .done) : (nil, .exists)
        case .replace:
            return current == nil ? (nil, .missing) : (store, .done)
        case .append:
            return (.set(key: key, value: (current?.value ?? []) + value, expiry: expiry), .done)
        case let .cas(old, remove):
            guard current?.value == old else { return (nil, .mismatch) }
            if remove { return (current == nil ? nil : .delete(key: key), .done) }
            return (store, .done)
        case let .increment(by, origin):
            var result = by
            if let current {
                guard current.value.count == 8 else { return (nil, .notANumber) }
                if origin != Int64.max {
                    let old = Int64(bitPattern: current.value.reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
                    if by == 0 { return (nil, .number(old)) }
                    result = by &+ old
                }
            } else {
                if origin == Int64.min { return (nil, .missing) }
                if origin != Int64.max { result = by &+ origin }
            }
            var bytes = [UInt8]()
            bytes.reserveCapacity(8)
            for shift in stride(from: 56, through: 0, by: -8) {
                bytes.append(UInt8(truncatingIfNeeded: UInt64(bitPattern: result) >> UInt64(shift)))
            }
            return (.set(key: key, value: bytes, expiry: expiry), .number(result))
        case .remove:
            return current == nil ? (nil, .missing) : (.delete(key: key), .done)
        }
    }

    /// Bytes of key, value and a compare-and-swap's old value (for size caps, quotas and
    /// metrics): each is held until the write commits and travels in its batch. (A `cas`
    /// of a 1 MB old value counted 20 bytes and passed every byte cap.)
    public var payloadBytes: Int {
        if case let .cas(old?, _) = kind { return key.count + value.count + old.count }
        return key.count + value.count
    }

    /// What the write holds in memory while it waits (its payload, itself, its arrays'
    /// headers and their rounding): what bounds a queue of writes by its memory, where a
    /// million writes of a few bytes each held over 100 MB that `payloadBytes` did not show.
    public var heldBytes: Int { payloadBytes + Self.heldOverhead }

    /// The memory a write holds beyond its payload bytes.
    public static let heldOverhead = MemoryLayout<ConditionalWrite>.stride + 2 * 32 + 2 * 16

    // MARK: bytes

    /// `kind:u8 flags:u8 [xt:u64] key:blob32 value:blob32` then, for cas,
    /// `hasOld:u8 remove:u8 [old:blob32]`, for increment `by:i64 origin:i64`.
    public func encode(into w: inout ByteWriter) {
        let tag: UInt8 = switch kind {
        case .set: 1
        case .add: 2
        case .replace: 3
        case .append: 4
        case .cas: 5
        case .increment: 6
        case .remove: 7
        }
        w.writeU8(tag)
        w.writeU8(expiry == nil ? 0 : 1)
        if let expiry { w.writeU64(expiry) }
        w.writeBlob32(key)
        w.writeBlob32(value)
        switch kind {
        case let .cas(old, remove):
            w.writeU8(old == nil ? 0 : 1)
            w.writeU8(remove ? 1 : 0)
            if let old { w.writeBlob32(old) }
        case let .increment(by, origin):
            w.writeU64(UInt64(bitPattern: by))
            w.writeU64(UInt64(bitPattern: origin))
        default:
            break
        }
    }

    public static func decode(from r: inout ByteReader<[UInt8]>) throws -> ConditionalWrite {
        let at = r.offset
        let tag = try r.readU8("write kind")
        let flags = try r.readU8("write flags")
        guard flags & ~1 == 0 else { throw DecodeError(offset: at + 1, reason: "unknown write flags \(flags)") }
        let expiry = flags & 1 == 1 ? try r.readU64("expiry") : nil
        let key = try r.readBlob32("key")
        let value = try r.readBlob32("value")
        let kind: Kind
        switch tag {
        case 1: kind = .set
        case 2: kind = .add
        case 3: kind = .replace
        case 4: kind = .append
        case 5:
            let hasOld = try r.readU8("cas old presence") == 1
            let remove = try r.readU8("cas remove") == 1
            kind = .cas(old: hasOld ? try r.readBlob32("cas old value") : nil, remove: remove)
        case 6:
            kind = .increment(by: Int64(bitPattern: try r.readU64("increment")), origin: Int64(bitPattern: try r.readU64("origin")))
        case 7: kind = .remove
        default: throw DecodeError(offset: at, reason: "unknown write kind \(tag)")
        }
        return ConditionalWrite(kind, key: key, value: value, expiry: expiry)
    }

    /// `count:u32` then each write.
    public static func encodeList(_ writes: [ConditionalWrite], into w: inout ByteWriter) {
        w.writeU32(UInt32(writes.count))
        for x in writes { x.encode(into: &w) }
    }

    public static func decodeList(from r: inout ByteReader<[UInt8]>) throws -> [ConditionalWrite] {
        // Each write takes at least 10 bytes.
        try r.readList("write", minimumBytesEach: 10) { try decode(from: &$0) }
    }
}

extension ConditionalWrite.Outcome {
    /// `tag:u8 [number:i64]`.
    public func encode(into w: inout ByteWriter) {
        switch self {
        case .done: w.writeU8(0)
        case let .number(n):
            w.writeU8(1)
            w.writeU64(UInt64(bitPattern: n))
        case .exists: w.writeU8(2)
        case .missing: w.writeU8(3)
        case .mismatch: w.writeU8(4)
        case .notANumber: w.writeU8(5)
        }
    }

    public static func decode(from r: inout ByteReader<[UInt8]>) throws -> Self {
        let at = r.offset
        switch try r.readU8("outcome") {
        case 0: return .done
        case 1: return .number(Int64(bitPattern: try r.readU64("number")))
        case 2: return .exists
        case 3: return .missing
        case 4: return .mismatch
        case 5: return .notANumber
        case let t: throw DecodeError(offset: at, reason: "unknown outcome \(t)")
        }
    }
}
