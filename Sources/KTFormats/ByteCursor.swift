import NIOCore

/// Reads big-endian fields from a `ByteBuffer` without moving its reader index, so a
/// decoder can find out whether a whole frame is there before consuming it.
struct ByteCursor {
    let buffer: ByteBuffer
    /// Bytes read so far, from the buffer's reader index.
    var offset = 0

    init(_ buffer: ByteBuffer) { self.buffer = buffer }

    var remaining: Int { buffer.readableBytes - offset }

    mutating func u8() -> UInt8? { int(UInt8.self) }
    mutating func u16() -> UInt16? { int(UInt16.self) }
    mutating func u32() -> UInt32? { int(UInt32.self) }
    mutating func u64() -> UInt64? { int(UInt64.self) }

    mutating func int<T: FixedWidthInteger>(_: T.Type) -> T? {
        guard let v = buffer.getInteger(at: buffer.readerIndex + offset, endianness: .big, as: T.self)
        else { return nil }
        offset += MemoryLayout<T>.size
        return v
    }

    mutating func bytes(_ count: Int) -> [UInt8]? {
        guard count >= 0, remaining >= count,
              let b = buffer.getBytes(at: buffer.readerIndex + offset, length: count)
        else { return nil }
        offset += count
        return b
    }
}
