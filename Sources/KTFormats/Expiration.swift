/// Kyoto Tycoon's expiration-time rules (`kttimeddb`).
///
/// Stored expiration times are absolute epoch seconds in 40 bits; `never` is `2^40 - 1`.
/// A requested `xt` is relative when positive or zero (seconds from now) and absolute when
/// negative (`-xt` is the epoch second); an absent `xt` means never.
public enum KTExpiration {
    /// The largest stored expiration time, meaning "never expires".
    public static let never: Int64 = (1 << 40) - 1

    /// The stored expiration time for a requested `xt` at current time `now` (epoch seconds).
    /// `nil` means no `xt` was given.
    public static func stored(requested xt: Int64?, now: Int64) -> Int64 {
        guard var xt else { return never }
        if xt < 0 {
            if xt < Int64.min / 2 { xt = Int64.min / 2 }
            xt = -xt
        } else {
            if xt > Int64.max / 2 { xt = Int64.max / 2 }
            xt += now
        }
        return min(xt, never)
    }

    /// Whether a record with stored expiration `xt` is expired at `now` (KT hides a record
    /// once the current time is past its expiration time).
    public static func isExpired(_ xt: Int64, at now: Int64) -> Bool {
        now > xt
    }

    /// Parses a decimal parameter (`xt`, `num`, …) the way KT's `kc::atoi` does: leading
    /// whitespace (any byte from 0x01 to 0x20), an optional sign, leading digits, anything
    /// after them ignored; no digits gives 0. Past 64 bits it wraps, as KT's does (an
    /// `increment` of `num=99999999999999999999` adds 7766279631452241919 there too).
    public static func parseInteger<S: Sequence>(_ text: S) -> Int64 where S.Element == UInt8 {
        var iterator = text.makeIterator()
        var negative = false
        var value: Int64 = 0
        var current = iterator.next()
        while let c = current, c > 0, c <= 0x20 { current = iterator.next() }
        if let c = current, c == 0x2D || c == 0x2B {
            negative = c == 0x2D
            current = iterator.next()
        }
        while let c = current, c >= 0x30, c <= 0x39 {
            value = value &* 10 &+ Int64(c - 0x30)
            current = iterator.next()
        }
        return negative ? 0 &- value : value
    }
}
