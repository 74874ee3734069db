/// Appends big-endian integers and length-prefixed byte strings to a `[UInt8]`.
///
/// Every binary format of the project (log entries, the QS write protocol) is built with
/// this writer so that the same value always encodes to the same bytes.
public struct ByteWriter: Sendable {
    public private(set) var bytes: [UInt8]

    public init(capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    public mutating func writeU8(_ v: UInt8) { bytes.append(v) }

    public mutating func writeU16(_ v: UInt16) {
        bytes.append(UInt8(truncatingIfNeeded: v >> 8))
        bytes.append(UInt8(truncatingIfNeeded: v))
    }

    public mutating func writeU32(_ v: UInt32) {
        for shift in stride(from: 24, through: 0, by: -8) {
            bytes.append(UInt8(truncatingIfNeeded: v >> UInt32(shift)))
        }
    }

    public mutating func writeU64(_ v: UInt64) {
        for shift in stride(from: 56, through: 0, by: -8) {
            bytes.append(UInt8(truncatingIfNeeded: v >> UInt64(shift)))
        }
    }

    public mutating func writeBytes<C: Collection>(_ b: C) where C.Element == UInt8 {
        bytes.append(contentsOf: b)
    }

    /// A byte string preceded by its length as u32.
    public mutating func writeBlob32<C: Collection>(_ b: C) where C.Element == UInt8 {
        writeU32(UInt32(b.count))
        bytes.append(contentsOf: b)
    }

    /// A UTF-8 string preceded by its length as u16 (callers keep strings under 64 KiB).
    public mutating func writeString16(_ s: String) {
        let utf8 = Array(s.utf8.prefix(Int(UInt16.max)))
        writeU16(UInt16(utf8.count))
        bytes.append(contentsOf: utf8)
    }
}
