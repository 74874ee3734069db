import Crypto
import QSBytes

/// One entry of the transaction log: what a single write transaction changed.
///
/// Encoding, the bytes that are stored, hashed and replicated verbatim:
/// version 1 `version:u8=1 commitTimeNs:u64 sourceID:string16 position:u64 ops:list`;
/// version 2, an initial copy's batch, adds the copy cursor stored beside the checkpoint:
/// `version:u8=2 … ops:list copyCursor:blob32`. An entry is written as version 1 unless it
/// carries a cursor, so logs without initial copies are byte for byte what they were.
public struct LogEntry: Sendable, Equatable {
    public static let version: UInt8 = 1
    /// The version of an entry that carries an initial copy's cursor.
    public static let copyVersion: UInt8 = 2

    public var commitTimeNs: UInt64
    public var origin: Origin
    public var operations: [Mutation]
    /// The source's initial-copy cursor after this entry (`meta cc/<sourceID>`); nil: the
    /// entry's batch carried none, which removes the source's cursor.
    public var copyCursor: [UInt8]?

    public init(commitTimeNs: UInt64, origin: Origin, operations: [Mutation], copyCursor: [UInt8]? = nil) {
        self.commitTimeNs = commitTimeNs
        self.origin = origin
        self.operations = operations
        self.copyCursor = copyCursor
    }

    public func encoded() -> [UInt8] {
        [UInt8](encodedCount: encodedCount) { encode(into: &$0) }
    }

    /// The bytes `encoded()` returns.
    public var encodedCount: Int {
        Self.encodedCount(origin: origin, operations: operations, copyCursor: copyCursor)
    }

    /// Writes the entry's bytes into memory sized by `encodedCount` (the page LMDB reserved
    /// for it, so a root's batch is encoded once, in place).
    public func encode(into w: inout RawByteWriter) {
        Self.encode(commitTimeNs: commitTimeNs, origin: origin, operations: operations, copyCursor: copyCursor, into: &w)
    }

    /// The bytes of the entry these parts make, its operations decoded or packed.
    public static func encodedCount(origin: Origin, operations: some MutationList, copyCursor: [UInt8]?) -> Int {
        1 + 8 + RawByteWriter.string16Count(origin.sourceID) + 8 + operations.encodedListCount
            + (copyCursor.map { 4 + $0.count } ?? 0)
    }

    /// Writes the entry these parts make (a packed list's bytes are copied whole).
    public static func encode(commitTimeNs: UInt64, origin: Origin, operations: some MutationList, copyCursor: [UInt8]?,
                              into w: inout RawByteWriter) {
        w.writeU8(copyCursor == nil ? version : copyVersion)
        w.writeU64(commitTimeNs)
        w.writeString16(origin.sourceID)
        w.writeU64(origin.position)
        operations.encodeList(into: &w)
        if let copyCursor { w.writeBlob32(copyCursor) }
    }

    public static func decode(_ bytes: [UInt8]) throws -> LogEntry {
        let p = try decodePacked(bytes)
        return LogEntry(commitTimeNs: p.commitTimeNs, origin: p.origin, operations: p.operations.mutations, copyCursor: p.copyCursor)
    }

    /// An entry with its operations left as its bytes hold them (read in place): what a
    /// replica applies.
    public struct Packed: Sendable {
        public var commitTimeNs: UInt64
        public var origin: Origin
        public var operations: PackedMutations
        public var copyCursor: [UInt8]?
    }

    /// Decodes an entry as `decode` does (the same checks and errors) but leaves its
    /// operations packed, sharing `bytes`.
    public static func decodePacked(_ bytes: [UInt8]) throws -> Packed {
        var r = ByteReader(bytes)
        let v = try r.readU8("entry version")
        guard v == version || v == copyVersion else { throw DecodeError(offset: 0, reason: "unsupported log entry version \(v)") }
        let t = try r.readU64("commit time")
        let sid = try r.readString16("source id")
        let pos = try r.readU64("position")
        let ops = try PackedMutations.read(from: &r)
        let cursor = v == copyVersion ? try r.readBlob32("copy cursor") : nil
        try r.expectEnd("log entry")
        return Packed(commitTimeNs: t, origin: Origin(sourceID: sid, position: pos), operations: ops, copyCursor: cursor)
    }
}

extension LogEntry {
    /// What a bridge appending an entry verbatim needs of it (`qsqsbridge --mode
    /// compatible`): its commit time, how many operations it holds and their key and value
    /// bytes (`Mutation.payloadBytes`), read without building the operations, their keys and
    /// values, or the source id. It checks the entry as `decode` does (version, UTF-8 source id, every operation's tag, flags and
    /// lengths, no trailing bytes): it accepts exactly the entries `decode` accepts.
    public static func summary(of bytes: [UInt8]) throws -> (commitTimeNs: UInt64, operations: Int, operationBytes: Int) {
        var r = ByteReader(bytes)
        let v = try r.readU8("entry version")
        guard v == version || v == copyVersion else { throw DecodeError(offset: 0, reason: "unsupported log entry version \(v)") }
        let t = try r.readU64("commit time")
        let idLength = Int(try r.readU16("source id length"))
        let idStart = r.consumed
        try r.skip(idLength, "source id")
        let id = bytes[idStart..<(idStart + idLength)]
        if !id.allSatisfy({ $0 < 0x80 }), String(validating: id, as: UTF8.self) == nil {
            throw DecodeError(offset: idStart, reason: "source id is not valid UTF-8")
        }
        _ = try r.readU64("position")
        let (count, payload) = try Mutation.skipList(from: &r)
        if v == copyVersion { try r.skip(Int(try r.readU32("copy cursor length")), "copy cursor") }
        try r.expectEnd("log entry")
        return (t, count, payload)
    }
}

/// The chained hash: `h(i) = SHA-256(h(i-1) ‖ entry bytes)`, `h(0)` = 32 zero bytes.
public enum ChainHash {
    public static func next(previous: [UInt8], entry: [UInt8]) -> [UInt8] {
        entry.withUnsafeBytes { next(previous: previous, entry: $0) }
    }

    /// The same over entry bytes in place (a page LMDB reserved).
    public static func next(previous: [UInt8], entry: UnsafeRawBufferPointer) -> [UInt8] {
        var hasher = SHA256()
        previous.withUnsafeBytes { hasher.update(bufferPointer: $0) }
        hasher.update(bufferPointer: entry)
        return bytes(of: hasher.finalize())
    }

    public static func digest(_ bytes: [UInt8]) -> [UInt8] {
        bytes.withUnsafeBytes { digest($0) }
    }

    public static func digest(_ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        var hasher = SHA256()
        hasher.update(bufferPointer: bytes)
        return Self.bytes(of: hasher.finalize())
    }

    /// The digest's 32 bytes in one copy (`Array(digest)` walks it as a generic sequence).
    private static func bytes(of digest: SHA256.Digest) -> [UInt8] {
        digest.withUnsafeBytes { Array($0) }
    }
}

/// An entry as read back from the log: its index, chained hash and stored bytes.
public struct StoredEntry: Sendable, Equatable {
    public var index: UInt64
    public var hash: [UInt8]
    public var bytes: [UInt8]

    public init(index: UInt64, hash: [UInt8], bytes: [UInt8]) {
        self.index = index
        self.hash = hash
        self.bytes = bytes
    }
}
