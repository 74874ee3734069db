import QSBytes

/// One change to the keyspace, as carried by a batch and stored in a log entry.
public enum Mutation: Sendable, Equatable, Hashable {
    /// Store `value` under `key`; `expiry` is KT's `xt` in epoch seconds, nil for never.
    case set(key: [UInt8], value: [UInt8], expiry: UInt64?)
    /// Remove `key`.
    case delete(key: [UInt8])
    /// Remove every key that starts with `prefix` (the empty prefix clears everything).
    case clearPrefix([UInt8])

    @usableFromInline static let setTag: UInt8 = 1
    @usableFromInline static let deleteTag: UInt8 = 2
    @usableFromInline static let clearTag: UInt8 = 3

    /// Bytes of key and value this operation carries (for size caps and metrics).
    public var payloadBytes: Int {
        switch self {
        case let .set(k, v, _): return k.count + v.count
        case let .delete(k): return k.count
        case let .clearPrefix(p): return p.count
        }
    }

    /// The binary form shared by the write protocol and the log entry:
    /// `1 flags:u8 [xt:u64] key:blob32 value:blob32` | `2 key:blob32` | `3 prefix:blob32`.
    public func encode(into w: inout ByteWriter) {
        w.writeRaw(count: encodedCount) { encode(into: &$0) }
    }

    /// The bytes `encode` writes.
    @inlinable
    public var encodedCount: Int {
        switch self {
        case let .set(key, value, expiry): return 2 + (expiry == nil ? 0 : 8) + 4 + key.count + 4 + value.count
        case let .delete(key): return 1 + 4 + key.count
        case let .clearPrefix(prefix): return 1 + 4 + prefix.count
        }
    }

    /// `encode` into memory sized by `encodedCount` (a log entry's reserved page).
    @inlinable
    public func encode(into w: inout RawByteWriter) {
        switch self {
        case let .set(key, value, expiry):
            w.writeU8(Self.setTag)
            w.writeU8(expiry == nil ? 0 : 1)
            if let expiry { w.writeU64(expiry) }
            w.writeBlob32(key)
            w.writeBlob32(value)
        case let .delete(key):
            w.writeU8(Self.deleteTag)
            w.writeBlob32(key)
        case let .clearPrefix(prefix):
            w.writeU8(Self.clearTag)
            w.writeBlob32(prefix)
        }
    }

    public static func decode(from r: inout ByteReader<[UInt8]>) throws -> Mutation {
        let at = r.offset
        switch try r.readU8("operation tag") {
        case setTag:
            let flags = try r.readU8("set flags")
            guard flags & ~1 == 0 else { throw DecodeError(offset: at + 1, reason: "unknown set flags \(flags)") }
            let expiry = flags & 1 == 1 ? try r.readU64("expiry") : nil
            let key = try r.readBlob32("key")
            let value = try r.readBlob32("value")
            return .set(key: key, value: value, expiry: expiry)
        case deleteTag:
            return .delete(key: try r.readBlob32("key"))
        case clearTag:
            return .clearPrefix(try r.readBlob32("prefix"))
        case let tag:
            throw DecodeError(offset: at, reason: "unknown operation tag \(tag)")
        }
    }

    /// A list of operations: `count:u32` then each operation.
    public static func encodeList(_ ops: [Mutation], into w: inout ByteWriter) {
        w.writeRaw(count: listCount(ops)) { encodeList(ops, into: &$0) }
    }

    /// The bytes `encodeList` writes.
    @inlinable
    public static func listCount(_ ops: [Mutation]) -> Int {
        ops.reduce(4) { $0 + $1.encodedCount }
    }

    @inlinable
    public static func encodeList(_ ops: [Mutation], into w: inout RawByteWriter) {
        w.writeU32(UInt32(ops.count))
        for op in ops { op.encode(into: &w) }
    }

    /// Decodes a list, refusing counts that could not fit in the remaining bytes.
    public static func decodeList(from r: inout ByteReader<[UInt8]>) throws -> [Mutation] {
        // Each operation takes at least 5 bytes: a count beyond that is hostile.
        try r.readList("operation", minimumBytesEach: 5) { try decode(from: &$0) }
    }
}

/// A stored value with its optional expiry (epoch seconds).
public struct Record: Sendable, Equatable {
    public var value: [UInt8]
    public var expiry: UInt64?

    public init(value: [UInt8], expiry: UInt64?) {
        self.value = value
        self.expiry = expiry
    }

    /// True when the record has expired at `now` (epoch seconds): KT hides a record once the
    /// current time is past its expiration time (kttimeddb.h: `ct > xt`), so a record is
    /// still read through the second it expires at.
    public func isExpired(at now: UInt64) -> Bool {
        guard let expiry else { return false }
        return expiry < now
    }
}

/// Where a log entry's change came from: the writing source and its position.
public struct Origin: Sendable, Equatable {
    public var sourceID: String
    public var position: UInt64

    public init(sourceID: String, position: UInt64) {
        self.sourceID = sourceID
        self.position = position
    }

    /// The longest source id a root keeps a checkpoint under, in UTF-8 bytes (docs/protocol.md).
    public static let maxSourceIDBytes = 255

    /// Why `sourceID` cannot name a checkpoint (empty, or longer than `maxSourceIDBytes`), nil when it can.
    public static func problem(sourceID: String) -> String? {
        let n = sourceID.utf8.count
        if n == 0 { return "empty" }
        if n > maxSourceIDBytes { return "\(n) bytes, the limit is \(maxSourceIDBytes)" }
        return nil
    }
}

/// The head of a node's transaction log.
public struct Head: Sendable, Equatable {
    /// Index of the last entry, 0 for an empty log.
    public var index: UInt64
    /// Chained hash at `index` (32 zero bytes for an empty log).
    public var hash: [UInt8]
    /// Commit time of the last entry, nanoseconds since the epoch (0 for an empty log).
    public var commitTimeNs: UInt64

    public init(index: UInt64, hash: [UInt8], commitTimeNs: UInt64) {
        self.index = index
        self.hash = hash
        self.commitTimeNs = commitTimeNs
    }

    public static let empty = Head(index: 0, hash: [UInt8](repeating: 0, count: 32), commitTimeNs: 0)
}

/// What a source's writer records at the root beside its checkpoint: how it maps what it
/// reads into keys (`qsktbridge`'s `--db-map`, as `db-map 0=,1=aux/`), so a writer started
/// again under the same source id with another mapping is refused before it writes keys
/// where the source's earlier keys are not (docs/protocol.md "Source descriptors"). Text,
/// compared byte for byte.
public enum SourceDescriptor {
    /// The longest descriptor a root keeps, in UTF-8 bytes.
    public static let maxBytes = 4096

    /// Why `descriptor` cannot be recorded (empty, too long, a control character), nil when it can.
    public static func problem(_ descriptor: String) -> String? {
        let n = descriptor.utf8.count
        if n == 0 { return "empty" }
        if n > maxBytes { return "\(n) bytes, the limit is \(maxBytes)" }
        if descriptor.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) { return "it holds a control character" }
        return nil
    }
}
