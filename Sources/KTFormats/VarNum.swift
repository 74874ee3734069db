/// Kyoto Cabinet's variable-length number: 7 bits per byte, most significant group first,
/// the high bit set on every byte but the last.
public enum VarNum {
    /// The bytes that encode `value`.
    public static func encode(_ value: UInt64) -> [UInt8] {
        var out: [UInt8] = []
        encode(value, into: &out)
        return out
    }

    /// Appends the encoding of `value` to `out`.
    public static func encode(_ value: UInt64, into out: inout [UInt8]) {
        var groups = 1
        var rest = value >> 7
        while rest > 0 {
            groups += 1
            rest >>= 7
        }
        for index in stride(from: groups - 1, through: 0, by: -1) {
            let group = UInt8((value >> (7 * UInt64(index))) & 0x7F)
            out.append(index == 0 ? group : group | 0x80)
        }
    }

    /// Decodes a number at the start of `bytes`.
    /// - Returns: the value and the number of bytes it took, or `nil` if `bytes` ends inside
    ///   the number or the number does not fit in 64 bits.
    public static func decode<C: Collection>(_ bytes: C) -> (value: UInt64, length: Int)?
    where C.Element == UInt8 {
        var value: UInt64 = 0
        var length = 0
        for byte in bytes {
            length += 1
            if length > 10 || value > (UInt64.max >> 7) { return nil }
            value = (value << 7) | UInt64(byte & 0x7F)
            if byte & 0x80 == 0 { return (value, length) }
        }
        return nil
    }
}
