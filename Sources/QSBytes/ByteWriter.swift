/// Appends big-endian integers and length-prefixed byte strings to a `[UInt8]`.
///
/// Every binary format of the project (log entries, the QS write protocol, KT messages and
/// frames) is built with this writer so that the same value always encodes to the same bytes.
public struct ByteWriter: Sendable {
    public private(set) var bytes: [UInt8]

    public init(capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    public mutating func writeU8(_ v: UInt8) { bytes.append(v) }

    public mutating func writeU16(_ v: UInt16) { writeUInt(UInt64(v), width: 2) }
    public mutating func writeU32(_ v: UInt32) { writeUInt(UInt64(v), width: 4) }
    public mutating func writeU64(_ v: UInt64) { writeUInt(v, width: 8) }

    /// A big-endian unsigned number in `width` bytes (1…8), such as KT's 40-bit times.
    public mutating func writeUInt(_ v: UInt64, width: Int) {
        // The low `width` bytes moved to the top, stored big-endian: one append, not `width`.
        let be = (v << UInt64((8 - width) * 8)).bigEndian
        withUnsafeBytes(of: be) { bytes.append(contentsOf: $0[0..<width]) }
    }

    public mutating func writeI64(_ v: Int64) { writeU64(UInt64(bitPattern: v)) }

    /// Kyoto Cabinet's variable-length number (see `VarNum`).
    public mutating func writeVarNum(_ value: UInt64) {
        var groups = 1
        var rest = value >> 7
        while rest > 0 {
            groups += 1
            rest >>= 7
        }
        for index in stride(from: groups - 1, through: 0, by: -1) {
            let group = UInt8((value >> (7 * UInt64(index))) & 0x7F)
            bytes.append(index == 0 ? group : group | 0x80)
        }
    }

    /// Grows the bytes by `count` and lets `fill` write them in place (see `writeRaw`).
    mutating func appendUninitialized(_ count: Int, _ fill: (UnsafeMutableRawBufferPointer) -> Void) {
        let start = bytes.count
        bytes.append(contentsOf: repeatElement(0, count: count))
        bytes.withUnsafeMutableBytes { fill(UnsafeMutableRawBufferPointer(rebasing: $0[start...])) }
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
