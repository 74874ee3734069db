/// Writes `ByteWriter`'s layout (big-endian integers, length-prefixed byte strings) straight
/// into memory the caller owns and has sized exactly: a page LMDB reserved for a log entry,
/// or the tail `ByteWriter.writeRaw` grew. The hot encoders (log entries, records,
/// mutations) have one implementation written against this writer; the array forms call it.
///
/// Writing past the end is a programming error (the size was computed by the same encoder),
/// so it traps rather than corrupting memory.
public struct RawByteWriter {
    @usableFromInline let buffer: UnsafeMutableRawBufferPointer
    @usableFromInline internal(set) var _offset: Int
    /// Bytes written so far.
    @inlinable public var offset: Int { _offset }

    @inlinable
    public init(_ buffer: UnsafeMutableRawBufferPointer) {
        self.buffer = buffer
        self._offset = 0
    }

    /// The bytes written so far (to checksum or hash them in place).
    @inlinable public var written: UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: buffer[0..<offset]) }

    /// Bytes left before the end of the buffer.
    @inlinable public var remaining: Int { buffer.count - offset }

    @inlinable
    public mutating func writeU8(_ v: UInt8) {
        precondition(offset < buffer.count, "RawByteWriter: write past the end of a \(buffer.count)-byte buffer")
        buffer[offset] = v
        _offset += 1
    }

    /// A big-endian unsigned number in `width` bytes (1…8).
    @inlinable
    public mutating func writeUInt(_ v: UInt64, width: Int) {
        precondition(width >= 1 && width <= 8 && remaining >= width, "RawByteWriter: write past the end of a \(buffer.count)-byte buffer")
        let be = (v << UInt64((8 - width) * 8)).bigEndian
        withUnsafeBytes(of: be) { src in
            (buffer.baseAddress! + offset).copyMemory(from: src.baseAddress!, byteCount: width)
        }
        _offset += width
    }

    @inlinable public mutating func writeU16(_ v: UInt16) { writeUInt(UInt64(v), width: 2) }
    @inlinable public mutating func writeU32(_ v: UInt32) { writeUInt(UInt64(v), width: 4) }
    @inlinable public mutating func writeU64(_ v: UInt64) { writeUInt(v, width: 8) }

    @inlinable
    public mutating func writeBytes(_ b: UnsafeRawBufferPointer) {
        precondition(remaining >= b.count, "RawByteWriter: write past the end of a \(buffer.count)-byte buffer")
        if let src = b.baseAddress, b.count > 0 {
            (buffer.baseAddress! + offset).copyMemory(from: src, byteCount: b.count)
        }
        _offset += b.count
    }

    @inlinable
    public mutating func writeBytes(_ b: [UInt8]) {
        b.withUnsafeBytes { writeBytes($0) }
    }

    /// A byte string preceded by its length as u32.
    @inlinable
    public mutating func writeBlob32(_ b: [UInt8]) {
        writeU32(UInt32(b.count))
        writeBytes(b)
    }

    /// The bytes `writeString16` takes for `s` (strings are cut at 64 KiB, as there).
    @inlinable
    public static func string16Count(_ s: String) -> Int { 2 + min(s.utf8.count, Int(UInt16.max)) }

    /// A UTF-8 string preceded by its length as u16 (cut at 64 KiB, like `ByteWriter`'s).
    @inlinable
    public mutating func writeString16(_ s: String) {
        let n = min(s.utf8.count, Int(UInt16.max))
        writeU16(UInt16(n))
        var s = s
        s.withUTF8 { writeBytes(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer($0)[0..<n])) }
    }
}

extension ByteWriter {
    /// Appends `count` bytes written by `fill` through a `RawByteWriter`, which must write
    /// exactly `count` bytes: how the array form of an exactly-sized encoder is built.
    public mutating func writeRaw(count: Int, _ fill: (inout RawByteWriter) -> Void) {
        appendUninitialized(count) { raw in
            var w = RawByteWriter(raw)
            fill(&w)
            precondition(w.offset == count, "an encoder announced \(count) bytes and wrote \(w.offset)")
        }
    }
}

extension Array where Element == UInt8 {
    /// An array of exactly `count` bytes written by `fill` through a `RawByteWriter`.
    public init(encodedCount count: Int, _ fill: (inout RawByteWriter) -> Void) {
        self.init(unsafeUninitializedCapacity: count) { buffer, initialized in
            var w = RawByteWriter(UnsafeMutableRawBufferPointer(buffer))
            fill(&w)
            precondition(w.offset == count, "an encoder announced \(count) bytes and wrote \(w.offset)")
            initialized = count
        }
    }
}
