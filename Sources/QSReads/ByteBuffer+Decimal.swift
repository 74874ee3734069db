import NIOCore

/// Decimal numbers as ASCII digits, without going through a String: the one way replies
/// write their numbers (memcached's `VALUE` line, KT's headers).
enum DecimalASCII {
    /// How many digits `n` takes (1 for 0).
    @inline(__always)
    static func digits(_ n: UInt64) -> Int {
        var count = 1
        var v = n
        while v >= 10 {
            v /= 10
            count += 1
        }
        return count
    }
}

/// Writes `n`'s digits at `p` (room for `DecimalASCII.digits(n)` bytes); returns how many.
@inline(__always)
func storeDecimal(_ n: UInt64, at p: UnsafeMutableRawPointer) -> Int {
    let count = DecimalASCII.digits(n)
    var v = n
    var i = count
    repeat {
        i -= 1
        (p + i).storeBytes(of: UInt8(truncatingIfNeeded: v % 10) &+ UInt8(ascii: "0"), as: UInt8.self)
        v /= 10
    } while i > 0
    return count
}

extension ByteBuffer {
    /// `n` in decimal ASCII.
    mutating func writeDecimal(_ n: UInt64) {
        writeWithUnsafeMutableBytes(minimumWritableBytes: 20) { buffer in
            guard let base = buffer.baseAddress else { return 0 }
            return storeDecimal(n, at: base)
        }
    }
}
