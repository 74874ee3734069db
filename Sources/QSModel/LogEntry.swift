import Crypto
import QSBytes

/// One entry of the transaction log: what a single write transaction changed.
///
/// Encoding, the bytes that are stored, hashed and replicated verbatim:
/// version 1 `version:u8=1 commitTimeNs:u64 sourceID:string16 position:u64 ops:list`;
/// version 2, an initial copy's batch, adds the copy cursor stored beside the checkpoint:
/// `version:u8=2 … ops:list copyCursor:blob32`. An entry is written as version 1 unless it
/// carries a cursor, so logs without initial copies are byte for byte what they were.
/// Version 3 records a source's descriptor (`SourceDescriptor`: how its writer maps what
/// it reads into keys) and changes nothing else: `version:u8=3 … ops:list(empty)
/// descriptor:string16`; its position is the source's checkpoint when it was recorded (0:
/// none), for the reader only: applying it moves no checkpoint and no copy cursor.
public struct LogEntry: Sendable, Equatable {
    public static let version: UInt8 = 1
    /// The version of an entry that carries an initial copy's cursor.
    public static let copyVersion: UInt8 = 2
    /// The version of an entry that records a source's descriptor.
    public static let descriptorVersion: UInt8 = 3

    public var commitTimeNs: UInt64
    public var origin: Origin
    public var operations: [Mutation]
    /// The source's initial-copy cursor after this entry (`meta cc/<sourceID>`); nil: the
    /// entry's batch carried none, which removes the source's cursor.
    public var copyCursor: [UInt8]?
    /// The source's descriptor this entry records (version 3: no operations, no cursor).
    public var descriptor: String?

    public init(commitTimeNs: UInt64, origin: Origin, operations: [Mutation], copyCursor: [UInt8]? = nil) {
        self.commitTimeNs = commitTimeNs
        self.origin = origin
        self.operations = operations
        self.copyCursor = copyCursor
    }

    /// The entry recording `descriptor` for `origin.sourceID`.
    public init(commitTimeNs: UInt64, origin: Origin, descriptor: String) {
        self.init(commitTimeNs: commitTimeNs, origin: origin, operations: [])
        self.descriptor = descriptor
    }

    /// Whether applying this entry moves its source's checkpoint (and copy cursor) to its
    /// origin: every entry but a descriptor's.
    public var movesCheckpoint: Bool { descriptor == nil }

    public func encoded() -> [UInt8] {
        [UInt8](encodedCount: encodedCount) { encode(into: &$0) }
    }

    /// The bytes `encoded()` returns.
    public var encodedCount: Int {
        if let descriptor { return Self.descriptorEncodedCount(origin: origin, descriptor: descriptor) }
        return Self.encodedCount(origin: origin, operations: operations, copyCursor: copyCursor)
    }

    /// Writes the entry's bytes into memory sized by `encodedCount` (the page LMDB reserved
    /// for it, so a root's batch is encoded once, in place).
    public func encode(into w: inout RawByteWriter) {
        if let descriptor {
            Self.encode(commitTimeNs: commitTimeNs, origin: origin, descriptor: descriptor, into: &w)
        } else {
            Self.encode(commitTimeNs: commitTimeNs, origin: origin, operations: operations, copyCursor: copyCursor, into: &w)
        }
    }

    /// The bytes of the entry recording `descriptor`.
    public static func descriptorEncodedCount(origin: Origin, descriptor: String) -> Int {
        1 + 8 + RawByteWriter.string16Count(origin.sourceID) + 8 + [Mutation]().encodedListCount
            + RawByteWriter.string16Count(descriptor)
    }

    /// Writes the entry recording `descriptor` (version 3, an empty operation list).
    public static func encode(commitTimeNs: UInt64, origin: Origin, descriptor: String, into w: inout RawByteWriter) {
        w.writeU8(descriptorVersion)
        w.writeU64(commitTimeNs)
        w.writeString16(origin.sourceID)
        w.writeU64(origin.position)
        [Mutation]().encodeList(into: &w)
        w.writeString16(descriptor)
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
        var entry = LogEntry(commitTimeNs: p.commitTimeNs, origin: p.origin, operations: p.operations.mutations, copyCursor: p.copyCursor)
        entry.descriptor = p.descriptor
        return entry
    }

    /// An entry with its operations left as its bytes hold them (read in place): what a
    /// replica applies.
    public struct Packed: Sendable {
        public var commitTimeNs: UInt64
        public var origin: Origin
        public var operations: PackedMutations
        public var copyCursor: [UInt8]?
        /// The source's descriptor a version-3 entry records.
        public var descriptor: String?

        /// See `LogEntry.movesCheckpoint`.
        public var movesCheckpoint: Bool { descriptor == nil }
    }

    /// Decodes an entry as `decode` does (the same checks and errors) but leaves its
    /// operations packed, sharing `bytes`.
    public static func decodePacked(_ bytes: [UInt8]) throws -> Packed { try decodePacked(bytes[...]) }

    /// `decodePacked` of an entry seen in a larger buffer (a frame's bytes): its operations
    /// share that buffer; errors name offsets from the entry's first byte.
    public static func decodePacked(_ bytes: ArraySlice<UInt8>) throws -> Packed {
        var r = ByteReader(bytes)
        let v = try r.readU8("entry version")
        try checkVersion(v)
        let t = try r.readU64("commit time")
        let sid = try r.readString16("source id")
        let pos = try r.readU64("position")
        let opsAt = r.consumed
        let ops = try PackedMutations.read(from: &r)
        let cursor = v == copyVersion ? try r.readBlob32("copy cursor") : nil
        var descriptor: String?
        if v == descriptorVersion {
            guard ops.count == 0 else { throw DecodeError(offset: opsAt, reason: "a descriptor entry (version 3) holds \(ops.count) operations; it holds none") }
            descriptor = try r.readString16("source descriptor")
        }
        try r.expectEnd("log entry")
        return Packed(commitTimeNs: t, origin: Origin(sourceID: sid, position: pos), operations: ops, copyCursor: cursor,
                      descriptor: descriptor)
    }

    static func checkVersion(_ v: UInt8) throws {
        guard v == version || v == copyVersion || v == descriptorVersion else {
            throw DecodeError(offset: 0, reason: "unsupported log entry version \(v)")
        }
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
        try checkVersion(v)
        let t = try r.readU64("commit time")
        let idLength = Int(try r.readU16("source id length"))
        let idStart = r.consumed
        try r.skip(idLength, "source id")
        let id = bytes[idStart..<(idStart + idLength)]
        if !id.allSatisfy({ $0 < 0x80 }), String(validating: id, as: UTF8.self) == nil {
            throw DecodeError(offset: idStart, reason: "source id is not valid UTF-8")
        }
        _ = try r.readU64("position")
        let opsAt = r.consumed
        let (count, payload) = try Mutation.skipList(from: &r)
        if v == copyVersion { try r.skip(Int(try r.readU32("copy cursor length")), "copy cursor") }
        if v == descriptorVersion {
            guard count == 0 else { throw DecodeError(offset: opsAt, reason: "a descriptor entry (version 3) holds \(count) operations; it holds none") }
            _ = try r.readString16("source descriptor")
        }
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

/// A log's hash chain followed entry by entry as it arrives (a bridge's subscription, a
/// capture replayed): each entry must come at the next index and hash, with the hash
/// before it, to its own hash. An entry damaged on the way (a byte inverted past TCP's
/// checksum) or an index skipped or repeated does not continue it.
public struct ChainFollower: Sendable {
    /// The last entry followed (the start: the index and hash the chain was taken up at).
    public private(set) var index: UInt64
    public private(set) var hash: [UInt8]

    public init(index: UInt64, hash: [UInt8]) {
        self.index = index
        self.hash = hash
    }

    /// Follows `list` as far as it continues the chain: how many of its entries it
    /// followed and, when one does not continue it, why (in words naming the entry).
    public mutating func follow(_ list: [StoredEntry]) -> (continuing: Int, broken: String?) {
        for (n, e) in list.enumerated() {
            guard e.index == index + 1 else {
                return (n, "entry \(e.index) where \(index + 1) was expected (an index skipped or repeated)")
            }
            guard ChainHash.next(previous: hash, entry: e.bytes) == e.hash else {
                return (n, "entry \(e.index): the chained hash does not continue the log (its bytes are not those hashed: damaged)")
            }
            index = e.index
            hash = e.hash
        }
        return (list.count, nil)
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

/// Log entries as the replication protocol carries them (`count:u32`, then each entry as
/// `index:u64 hash:32 entry:blob32`), checked once and then read in place: a replica
/// applies its upstream's entries straight from the frame's bytes, with no array per hash
/// and per entry (docs/benchmarks.md, "Fourteenth session").
///
/// Built only by `init(_:)` (encoding) or `read(from:)` (with exactly the checks and errors
/// of reading the list as `[StoredEntry]`), so `forEach` walks the bytes without checking
/// again.
public struct PackedEntries: Sendable, Equatable {
    /// The encoded list, its count included. A slice: read from a frame, it shares the
    /// frame's storage.
    public let bytes: ArraySlice<UInt8>
    /// How many entries the list holds.
    public let count: Int

    /// `index:u64 hash:32 entry-length:u32`: the least an entry takes.
    public static let minimumBytesEach = 44

    private init(checked bytes: ArraySlice<UInt8>, count: Int) {
        self.bytes = bytes
        self.count = count
    }

    /// A list the store wrote from its own checked log (`count` entries in `encoded`, laid
    /// out as `read(from:)` reads them).
    package init(encoded: [UInt8], count: Int) {
        self.init(checked: encoded[...], count: count)
    }

    /// Every entry's hash must be 32 bytes (a SHA-256, as every `StoredEntry` the code makes
    /// holds): the list's layout, which `forEach` walks, has no length for it.
    public init(_ entries: [StoredEntry]) {
        for e in entries {
            precondition(e.hash.count == 32, "log entry \(e.index): a chained hash is 32 bytes, not \(e.hash.count)")
        }
        let total = entries.reduce(4) { $0 + Self.minimumBytesEach + $1.bytes.count }
        bytes = [UInt8](encodedCount: total) { w in
            w.writeU32(UInt32(entries.count))
            for e in entries {
                w.writeU64(e.index)
                e.hash.withUnsafeBytes { w.writeBytes($0) }
                w.writeU32(UInt32(e.bytes.count))
                e.bytes.withUnsafeBytes { w.writeBytes($0) }
            }
        }[...]
        count = entries.count
    }

    /// Reads a list at `r`, checked as reading it into `[StoredEntry]` checks it (the same
    /// errors at the same offsets: `ByteReader.readList` of `index`, `hash`, `entry`),
    /// copying nothing. Each hash must be 32 bytes, so an entry is at least 44.
    public static func read(from r: inout ByteReader<[UInt8]>) throws -> PackedEntries {
        let start = r.index
        let n = Int(try r.readU32("entry count"))
        guard n <= r.remaining / minimumBytesEach else {
            throw DecodeError(offset: r.offset - 4, reason: "entry count \(n) exceeds what \(r.remaining) bytes can hold")
        }
        for _ in 0..<n {
            _ = try r.readU64("index")
            try r.skip(32, "hash")
            _ = try r.skipBlob32("entry")
        }
        return PackedEntries(checked: r.bytes[start..<r.index], count: n)
    }

    public var isEmpty: Bool { count == 0 }

    /// Calls `body` with each entry in order: its index, its chained hash (32 bytes) and its
    /// bytes, both slices of `bytes` (no copy).
    public func forEach(_ body: (_ index: UInt64, _ hash: ArraySlice<UInt8>, _ entry: ArraySlice<UInt8>) throws -> Void) rethrows {
        // Checked when the list was built: every length here stays inside `bytes`.
        func uint(_ at: Int, _ width: Int) -> UInt64 {
            var v: UInt64 = 0
            for i in at..<(at + width) { v = v << 8 | UInt64(bytes[i]) }
            return v
        }
        var at = bytes.startIndex + 4
        for _ in 0..<count {
            let index = uint(at, 8)
            let n = Int(uint(at + 40, 4))
            try body(index, bytes[(at + 8)..<(at + 40)], bytes[(at + 44)..<(at + 44 + n)])
            at += Self.minimumBytesEach + n
        }
    }

    /// The entries, each hash and entry in an array of its own.
    public var entries: [StoredEntry] {
        var out = [StoredEntry]()
        out.reserveCapacity(count)
        forEach { out.append(StoredEntry(index: $0, hash: Array($1), bytes: Array($2))) }
        return out
    }
}
