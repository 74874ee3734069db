import QSBytes

/// A list of operations as the write protocol and a log entry carry it (`count:u32`, then
/// each operation as `Mutation.encode` writes it), checked once and then read in place. A
/// root applies a batch's operations straight from the request's bytes and its log entry
/// takes them whole: no array per key and value, no second encoding (docs/benchmarks.md,
/// "Thirteenth session").
///
/// Built only by `init(_:)` (encoding) or `read(from:)` (checking every operation as
/// `Mutation.decodeList` does), so `forEach` can walk the bytes without checking again.
public struct PackedMutations: Sendable, Hashable {
    /// The encoded list, its count included. A slice: read from a frame, it shares the
    /// frame's storage.
    public let bytes: ArraySlice<UInt8>
    /// How many operations the list holds.
    public let count: Int

    private init(checked bytes: ArraySlice<UInt8>, count: Int) {
        self.bytes = bytes
        self.count = count
    }

    public init(_ operations: [Mutation]) {
        bytes = [UInt8](encodedCount: Mutation.listCount(operations)) { Mutation.encodeList(operations, into: &$0) }[...]
        count = operations.count
    }

    /// Reads a list at `r`, checked as `Mutation.decodeList` checks it (the same errors at
    /// the same offsets), copying nothing.
    public static func read(from r: inout ByteReader<[UInt8]>) throws -> PackedMutations { try readChecked(from: &r) }

    /// `read(from:)` from a slice (a log entry seen in a frame's bytes), sharing its storage.
    public static func read(from r: inout ByteReader<ArraySlice<UInt8>>) throws -> PackedMutations { try readChecked(from: &r) }

    static func readChecked<Bytes>(from r: inout ByteReader<Bytes>) throws -> PackedMutations
    where Bytes.SubSequence == ArraySlice<UInt8> {
        let start = r.index
        let n = try Mutation.skipList(from: &r).count
        return PackedMutations(checked: r.bytes[start..<r.index], count: n)
    }

    public var isEmpty: Bool { count == 0 }

    /// The operations, each key and value in an array of its own (for the paths that keep
    /// them: a cluster member's etcd transaction, tools, tests).
    public var mutations: [Mutation] {
        var out = [Mutation]()
        out.reserveCapacity(count)
        forEach { out.append($0.mutation) }
        return out
    }

    /// Calls `body` with each operation in order, its key and value pointing into `bytes`
    /// (valid only during the call: a view must not be kept, which is why this is for the
    /// package's own code only).
    package func forEach(_ body: (MutationView) throws -> Void) rethrows {
        try bytes.withUnsafeBytes { raw in
            // Checked when the list was built: a length here never runs past the end.
            func u32(_ at: Int) -> Int {
                Int(raw[at]) << 24 | Int(raw[at + 1]) << 16 | Int(raw[at + 2]) << 8 | Int(raw[at + 3])
            }
            func blob(_ at: inout Int) -> UnsafeRawBufferPointer {
                let n = u32(at)
                defer { at += 4 + n }
                return UnsafeRawBufferPointer(rebasing: raw[(at + 4)..<(at + 4 + n)])
            }
            var at = Self.firstOperation
            for _ in 0..<count {
                let start = at
                let tag = raw[at]
                at += 1
                switch tag {
                case Mutation.setTag:
                    var expiry: UInt64?
                    if raw[at] & 1 == 1 {
                        expiry = (0..<8).reduce(UInt64(0)) { $0 << 8 | UInt64(raw[at + 1 + $1]) }
                        at += 8
                    }
                    at += 1
                    let key = blob(&at)
                    let value = blob(&at)
                    try body(MutationView(kind: .set, key: key, value: value, expiry: expiry, range: start..<at))
                case Mutation.deleteTag:
                    let key = blob(&at)
                    try body(MutationView(kind: .delete, key: key, value: UnsafeRawBufferPointer(start: nil, count: 0), expiry: nil,
                                          range: start..<at))
                default:
                    let prefix = blob(&at)
                    try body(MutationView(kind: .clearPrefix, key: prefix, value: UnsafeRawBufferPointer(start: nil, count: 0),
                                          expiry: nil, range: start..<at))
                }
            }
        }
    }

    /// Where the first operation's bytes start (after the count).
    package static let firstOperation = 4

    /// The list of the `count` operations in `runs` (each a run of whole operations of this
    /// list: one `MutationView.range` or adjacent ones joined), in that order: a batch's kept
    /// operations when some were dropped.
    package func selecting(_ runs: [Range<Int>], count: Int) -> PackedMutations {
        let total = runs.reduce(Self.firstOperation) { $0 + $1.count }
        let bytes = [UInt8](encodedCount: total) { w in
            w.writeU32(UInt32(count))
            self.bytes.withUnsafeBytes { raw in
                for r in runs { w.writeBytes(UnsafeRawBufferPointer(rebasing: raw[r])) }
            }
        }
        // `forEach` trusts a list's bytes: runs that are not `count` whole operations would
        // make it read past them. Checked here (only a batch with drops comes this way).
        var r = ByteReader(bytes)
        precondition((try? Mutation.skipList(from: &r))?.count == count && r.isAtEnd,
                     "kept runs of \(total) bytes are not \(count) whole operations")
        return PackedMutations(checked: bytes[...], count: count)
    }

}

/// Operations a log entry is written from: decoded (`[Mutation]`) or packed.
public protocol MutationList {
    /// How many operations.
    var operationCount: Int { get }
    /// The bytes `encodeList` writes.
    var encodedListCount: Int { get }
    /// Writes `count:u32` then each operation (`Mutation.encodeList`).
    func encodeList(into w: inout RawByteWriter)
}

extension PackedMutations: MutationList {
    public var operationCount: Int { count }
    public var encodedListCount: Int { bytes.count }
    /// The list's bytes, copied whole.
    public func encodeList(into w: inout RawByteWriter) {
        bytes.withUnsafeBytes { w.writeBytes($0) }
    }
}

extension Array: MutationList where Element == Mutation {
    public var operationCount: Int { count }
    public var encodedListCount: Int { Mutation.listCount(self) }
    public func encodeList(into w: inout RawByteWriter) { Mutation.encodeList(self, into: &w) }
}

/// One operation of a `PackedMutations`, read in place (valid only inside `forEach`).
package struct MutationView {
    package enum Kind: Sendable { case set, delete, clearPrefix }

    package let kind: Kind
    /// The key (of a set or delete) or the prefix (of a clear).
    package let key: UnsafeRawBufferPointer
    /// A set's value; empty otherwise.
    package let value: UnsafeRawBufferPointer
    /// A set's expiry (epoch seconds), nil for never.
    package let expiry: UInt64?
    /// Where the operation's bytes are, as offsets from the start of the list's bytes.
    package let range: Range<Int>

    /// The operation with its key and value copied into arrays.
    package var mutation: Mutation {
        switch kind {
        case .set: return .set(key: Array(key), value: Array(value), expiry: expiry)
        case .delete: return .delete(key: Array(key))
        case .clearPrefix: return .clearPrefix(Array(key))
        }
    }
}

extension Mutation {
    /// Passes over one encoded operation, checked as `decode` checks it (the same errors at
    /// the same offsets), and returns its key and value bytes (`payloadBytes`); builds nothing.
    static func skip<Bytes>(from r: inout ByteReader<Bytes>) throws -> Int {
        let at = r.offset
        switch try r.readU8("operation tag") {
        case setTag:
            let flags = try r.readU8("set flags")
            guard flags & ~1 == 0 else { throw DecodeError(offset: at + 1, reason: "unknown set flags \(flags)") }
            if flags & 1 == 1 { try r.skip(8, "expiry") }
            let key = try r.skipBlob32("key").count
            return key + (try r.skipBlob32("value").count)
        case deleteTag:
            return try r.skipBlob32("key").count
        case clearTag:
            return try r.skipBlob32("prefix").count
        case let tag:
            throw DecodeError(offset: at, reason: "unknown operation tag \(tag)")
        }
    }

    /// Passes over a list as `decodeList` reads it (the same checks and errors): how many
    /// operations it holds and their key and value bytes.
    static func skipList<Bytes>(from r: inout ByteReader<Bytes>) throws -> (count: Int, payloadBytes: Int) {
        let n = Int(try r.readU32("operation count"))
        // Each operation takes at least 5 bytes, as `decodeList` requires.
        guard n <= r.remaining / 5 else {
            throw DecodeError(offset: r.offset - 4, reason: "operation count \(n) exceeds what \(r.remaining) bytes can hold")
        }
        var payload = 0
        for _ in 0..<n { payload += try skip(from: &r) }
        return (n, payload)
    }
}
