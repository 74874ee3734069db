import NIOCore

extension ByteBuffer {
    /// `n` in decimal ASCII, without going through a String.
    mutating func writeDecimal(_ n: UInt64) {
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 20 digits at most, on the stack
        withUnsafeMutableBytes(of: &digits) { d in
            var v = n
            var i = 20
            repeat {
                i -= 1
                d[i] = UInt8(truncatingIfNeeded: v % 10) + UInt8(ascii: "0")
                v /= 10
            } while v > 0
            writeBytes(UnsafeRawBufferPointer(rebasing: d[i..<20]))
        }
    }
}
