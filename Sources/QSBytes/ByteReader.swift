/// Reads big-endian integers, Kyoto varnums and length-prefixed byte strings from bytes,
/// throwing `DecodeError` (never trapping) on truncated or inconsistent input.
///
/// The one byte reader of every binary format. It reads any random-access collection of
/// bytes indexed by `Int`: a `[UInt8]`, an `ArraySlice`, or (in the stream decoders) a
/// `ByteBuffer`'s `readableBytesView`, so a decoder can parse a frame in place and, when it
/// meets a `.truncated` error, wait for more bytes without having consumed any.
public struct ByteReader<Bytes: RandomAccessCollection>: Sendable
where Bytes.Element == UInt8, Bytes.Index == Int, Bytes: Sendable {
    public let bytes: Bytes
    /// Index in `bytes` of the next byte.
    @usableFromInline var position: Int
    /// Offset of `bytes.startIndex` in the input, so errors name input offsets.
    public let base: Int

    /// - Parameter base: the offset, in the whole input, of the first byte of `bytes`.
    @inlinable
    public init(_ bytes: Bytes, base: Int = 0) {
        self.bytes = bytes
        self.position = bytes.startIndex
        self.base = base
    }

    /// Bytes read so far, plus `base`: the input offset of the next byte.
    @inlinable public var offset: Int { base + position - bytes.startIndex }
    /// Bytes read so far.
    @inlinable public var consumed: Int { position - bytes.startIndex }
    @inlinable public var remaining: Int { bytes.endIndex - position }
    @inlinable public var isAtEnd: Bool { position >= bytes.endIndex }
    /// The index in `bytes` of the next byte.
    @inlinable public var index: Int { position }

    @inlinable
    mutating func need(_ n: Int, _ what: String) throws(DecodeError) {
        if n < 0 || remaining < n {
            throw DecodeError(offset: offset, reason: "truncated \(what): need \(n) bytes, have \(remaining)", kind: .truncated)
        }
    }

    /// The next byte without consuming it.
    @inlinable
    public func peekU8(_ what: String = "u8") throws(DecodeError) -> UInt8 {
        guard position < bytes.endIndex else {
            throw DecodeError(offset: offset, reason: "truncated \(what): need 1 bytes, have 0", kind: .truncated)
        }
        return bytes[position]
    }

    @inlinable
    public mutating func readU8(_ what: String = "u8") throws(DecodeError) -> UInt8 {
        try need(1, what)
        defer { position += 1 }
        return bytes[position]
    }

    /// A big-endian unsigned number of `width` bytes (1…8), such as KT's 40-bit times.
    @inlinable
    public mutating func readUInt(width: Int, _ what: String) throws(DecodeError) -> UInt64 {
        try need(width, what)
        var v: UInt64 = 0
        for i in position..<(position + width) { v = v << 8 | UInt64(bytes[i]) }
        position += width
        return v
    }

    @inlinable
    public mutating func readU16(_ what: String = "u16") throws(DecodeError) -> UInt16 {
        UInt16(truncatingIfNeeded: try readUInt(width: 2, what))
    }

    @inlinable
    public mutating func readU32(_ what: String = "u32") throws(DecodeError) -> UInt32 {
        UInt32(truncatingIfNeeded: try readUInt(width: 4, what))
    }

    @inlinable
    public mutating func readU64(_ what: String = "u64") throws(DecodeError) -> UInt64 {
        try readUInt(width: 8, what)
    }

    @inlinable
    public mutating func readI64(_ what: String = "i64") throws(DecodeError) -> Int64 {
        Int64(bitPattern: try readUInt(width: 8, what))
    }

    @inlinable
    public mutating func readBytes(_ n: Int, _ what: String = "bytes") throws(DecodeError) -> [UInt8] {
        try need(n, what)
        defer { position += n }
        return copy(position..<(position + n))
    }

    /// The bytes at `range` (indices of `bytes`) in one copy from contiguous storage (an
    /// array, a slice, a buffer's view), not the generic element-by-element path.
    @inlinable
    func copy(_ range: Range<Int>) -> [UInt8] {
        let start = range.lowerBound - bytes.startIndex
        return bytes.withContiguousStorageIfAvailable { Array(UnsafeBufferPointer(rebasing: $0[start..<(start + range.count)])) }
            ?? Array(bytes[range])
    }

    @inlinable
    public mutating func skip(_ n: Int, _ what: String = "bytes") throws(DecodeError) {
        try need(n, what)
        position += n
    }

    /// A length prefix of `width` bytes before `what`. Its error says "truncated WHAT
    /// length", a string built only on that path (decoding runs per key and value).
    @inlinable
    mutating func readLength(width: Int, of what: String) throws(DecodeError) -> Int {
        guard remaining >= width else {
            throw DecodeError(offset: offset, reason: "truncated \(what) length: need \(width) bytes, have \(remaining)", kind: .truncated)
        }
        var v = 0
        for i in position..<(position + width) { v = v << 8 | Int(bytes[i]) }
        position += width
        return v
    }

    /// A byte string preceded by its u32 length.
    @inlinable
    public mutating func readBlob32(_ what: String = "blob") throws(DecodeError) -> [UInt8] {
        copy(try skipBlob32(what))
    }

    /// Passes over a byte string preceded by its u32 length, checked as `readBlob32` checks
    /// it (the same errors), and returns where its bytes are in `bytes`: nothing is copied.
    @inlinable
    public mutating func skipBlob32(_ what: String = "blob") throws(DecodeError) -> Range<Int> {
        let n = try readLength(width: 4, of: what)
        try need(n, what)
        defer { position += n }
        return position..<(position + n)
    }

    /// A UTF-8 string preceded by its u16 length.
    @inlinable
    public mutating func readString16(_ what: String = "string") throws(DecodeError) -> String {
        let n = try readLength(width: 2, of: what)
        try need(n, what)
        let start = position - bytes.startIndex
        position += n
        // Validated where the bytes are, without an array of them first; ASCII (every
        // source id so far) needs no validation.
        let decoded = bytes.withContiguousStorageIfAvailable { all -> String? in
            let raw = UnsafeBufferPointer(rebasing: all[start..<(start + n)])
            return raw.allSatisfy { $0 < 0x80 } ? String(decoding: raw, as: UTF8.self) : String(validating: raw, as: UTF8.self)
        } ?? String(validating: bytes[(position - n)..<position], as: UTF8.self)
        guard let s = decoded else {
            throw DecodeError(offset: offset - n, reason: "\(what) is not valid UTF-8")
        }
        return s
    }

    /// Kyoto Cabinet's variable-length number (see `VarNum`); a number that does not fit in
    /// 64 bits is malformed, one cut by the end of the input truncated.
    @inlinable
    public mutating func readVarNum(_ what: String = "varnum") throws(DecodeError) -> UInt64 {
        let start = offset
        var value: UInt64 = 0
        var length = 0
        while true {
            guard position < bytes.endIndex else {
                throw DecodeError(offset: start, reason: "truncated \(what)", kind: .truncated)
            }
            let byte = bytes[position]
            position += 1
            length += 1
            if length > 10 || value > (UInt64.max >> 7) {
                throw DecodeError(offset: start, reason: "\(what) does not fit in 64 bits")
            }
            value = (value << 7) | UInt64(byte & 0x7F)
            if byte & 0x80 == 0 { return value }
        }
    }

    /// Throws unless every byte was consumed: trailing garbage is an error, not ignored.
    public func expectEnd(_ what: String) throws(DecodeError) {
        if !isAtEnd {
            throw DecodeError(offset: offset, reason: "\(remaining) unexpected trailing bytes after \(what)")
        }
    }
}

extension ByteReader {
    /// Parses one whole structure at the start of `bytes` (a frame of a stream): the value
    /// and the bytes it took, or nil when `bytes` ends inside it, so a stream decoder can
    /// wait for more bytes without having consumed any. Other errors are thrown.
    @inlinable
    public static func prefix<T>(
        of bytes: Bytes, base: Int = 0, _ parse: (inout ByteReader<Bytes>) throws(DecodeError) -> T
    ) throws(DecodeError) -> (value: T, length: Int)? {
        var r = ByteReader(bytes, base: base)
        do {
            let value = try parse(&r)
            return (value, r.consumed)
        } catch where error.kind == .truncated {
            return nil
        }
    }
}

extension ByteReader {
    /// `count:u32` then `count` elements read by `element`. A count that `remaining` bytes
    /// could not hold at `minimumBytesEach` per element is refused before anything is
    /// allocated (a hostile count must not reserve gigabytes).
    public mutating func readList<T>(_ what: String, minimumBytesEach: Int,
                                     _ element: (inout ByteReader<Bytes>) throws -> T) throws -> [T] {
        let n = Int(try readU32("\(what) count"))
        guard n <= remaining / max(minimumBytesEach, 1) else {
            throw DecodeError(offset: offset - 4, reason: "\(what) count \(n) exceeds what \(remaining) bytes can hold")
        }
        var out = [T]()
        out.reserveCapacity(n)
        for _ in 0..<n { out.append(try element(&self)) }
        return out
    }
}
