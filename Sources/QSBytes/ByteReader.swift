/// Why bytes could not be decoded: always names what was expected and where.
public struct DecodeError: Error, Sendable, Equatable, CustomStringConvertible {
    public let offset: Int
    public let reason: String

    public init(offset: Int, reason: String) {
        self.offset = offset
        self.reason = reason
    }

    public var description: String { "\(reason) at byte offset \(offset)" }
}

/// Reads big-endian integers and length-prefixed byte strings from a byte array,
/// throwing `DecodeError` (never trapping) on truncated or inconsistent input.
public struct ByteReader: Sendable {
    public let bytes: [UInt8]
    public private(set) var offset: Int

    public init(_ bytes: [UInt8], offset: Int = 0) {
        self.bytes = bytes
        self.offset = offset
    }

    public var remaining: Int { bytes.count - offset }
    public var isAtEnd: Bool { offset >= bytes.count }

    private mutating func need(_ n: Int, _ what: String) throws {
        if n < 0 || remaining < n {
            throw DecodeError(offset: offset, reason: "truncated \(what): need \(n) bytes, have \(remaining)")
        }
    }

    public mutating func readU8(_ what: String = "u8") throws -> UInt8 {
        try need(1, what)
        defer { offset += 1 }
        return bytes[offset]
    }

    public mutating func readU16(_ what: String = "u16") throws -> UInt16 {
        try need(2, what)
        defer { offset += 2 }
        return UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
    }

    public mutating func readU32(_ what: String = "u32") throws -> UInt32 {
        try need(4, what)
        var v: UInt32 = 0
        for i in 0..<4 { v = v << 8 | UInt32(bytes[offset + i]) }
        offset += 4
        return v
    }

    public mutating func readU64(_ what: String = "u64") throws -> UInt64 {
        try need(8, what)
        var v: UInt64 = 0
        for i in 0..<8 { v = v << 8 | UInt64(bytes[offset + i]) }
        offset += 8
        return v
    }

    public mutating func readBytes(_ n: Int, _ what: String = "bytes") throws -> [UInt8] {
        try need(n, what)
        defer { offset += n }
        return Array(bytes[offset..<offset + n])
    }

    /// A byte string preceded by its u32 length.
    public mutating func readBlob32(_ what: String = "blob") throws -> [UInt8] {
        let n = Int(try readU32("\(what) length"))
        return try readBytes(n, what)
    }

    /// A UTF-8 string preceded by its u16 length.
    public mutating func readString16(_ what: String = "string") throws -> String {
        let n = Int(try readU16("\(what) length"))
        let raw = try readBytes(n, what)
        guard let s = String(validating: raw, as: UTF8.self) else {
            throw DecodeError(offset: offset - n, reason: "\(what) is not valid UTF-8")
        }
        return s
    }

    /// Throws unless every byte was consumed: trailing garbage is an error, not ignored.
    public func expectEnd(_ what: String) throws {
        if !isAtEnd {
            throw DecodeError(offset: offset, reason: "\(remaining) unexpected trailing bytes after \(what)")
        }
    }
}
