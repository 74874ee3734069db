/// Big-endian helpers over byte arrays, shared by the codecs.
enum BE {
    static func append<T: FixedWidthInteger>(_ value: T, _ width: Int, to out: inout [UInt8]) {
        let v = UInt64(truncatingIfNeeded: value)
        for shift in stride(from: (width - 1) * 8, through: 0, by: -8) {
            out.append(UInt8(truncatingIfNeeded: v >> UInt64(shift)))
        }
    }

    /// Reads `width` bytes at `offset` as a big-endian number; `nil` when out of range.
    static func read(_ bytes: ArraySlice<UInt8>, at offset: Int, width: Int) -> UInt64? {
        let start = bytes.startIndex + offset
        guard offset >= 0, start + width <= bytes.endIndex else { return nil }
        var v: UInt64 = 0
        for i in start..<(start + width) { v = (v << 8) | UInt64(bytes[i]) }
        return v
    }
}
