/// Kyoto Cabinet's variable-length number: 7 bits per byte, most significant group first,
/// the high bit set on every byte but the last. Read with `ByteReader.readVarNum`, written
/// with `ByteWriter.writeVarNum`.
public enum VarNum {
    /// The bytes that encode `value`.
    public static func encode(_ value: UInt64) -> [UInt8] {
        var w = ByteWriter(capacity: 10)
        w.writeVarNum(value)
        return w.bytes
    }

    /// Decodes a number at the start of `bytes`.
    /// - Returns: the value and the number of bytes it took, or `nil` if `bytes` ends inside
    ///   the number or the number does not fit in 64 bits.
    public static func decode(_ bytes: [UInt8]) -> (value: UInt64, length: Int)? {
        var r = ByteReader(bytes)
        guard let v = try? r.readVarNum() else { return nil }
        return (v, r.consumed)
    }
}
