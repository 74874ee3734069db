#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The times KT reads from `X-Kt-Xt` on a RESTful PUT, parsed exactly as KT's
/// `kt::strmktime` (ktutil.cc) parses them, so that a producer moved from KT to qsrest stores
/// the expiry readers on KT saw:
///
/// - a decimal number, optionally followed by a unit `s`, `m`, `h` or `d` (`30`, `5m`,
///   `1d`): that many seconds. KT's REST PUT takes the result as an absolute epoch time, so
///   `1d` means 1970-01-02, a record that is expired at once: KT stores it unreadable, and so
///   does qsrest;
/// - `0x` and hexadecimal digits;
/// - W3C dates (`2026-12-05T10:00:00+09:00`, any prefix of it) and `2026/12/05 10:00:00`;
/// - RFC 1123 dates (`Sat, 05 Dec 2026 10:00:00 GMT`, `+0900` offsets, a few zone names).
///
/// Anything else is nil (KT's `INT64MIN`). Field values out of range are normalised as
/// `timegm` does; numbers wrap as KT's `atoi` does, and so does all arithmetic on them
/// (a producer's header is outside input: `2026-9223372036854775808` trapped).
public enum KTHTTPDate {
    public static func parse(_ text: String) -> Int64? {
        var bytes = Array(text.utf8)
        // A C string: it ends at the first NUL.
        if let nul = bytes.firstIndex(of: 0) { bytes.removeSubrange(nul...) }
        return TimeText(bytes.map { Int8(bitPattern: $0) }).make()
    }
}

/// `strmktime` over a NUL-terminated copy of the text; `char` is signed, as on the
/// platforms KT runs on (bytes ≥ 0x80 are never whitespace or digits).
private struct TimeText {
    let c: [Int8]

    init(_ chars: [Int8]) { c = chars + [0] }

    subscript(_ i: Int) -> Int8 { i < c.count ? c[i] : 0 }

    func isSpace(_ i: Int) -> Bool { self[i] > 0 && self[i] <= 0x20 }
    func isDigit(_ i: Int) -> Bool { self[i] >= 0x30 && self[i] <= 0x39 }
    func strlen(_ i: Int) -> Int { var n = i; while self[n] != 0 { n += 1 }; return n - i }
    func strchr(_ i: Int, _ ch: UInt8) -> Int? {
        var n = i
        while self[n] != 0 { if self[n] == Int8(ch) { return n }; n += 1 }
        return nil
    }

    /// `kc::atoi`: leading whitespace, a sign, decimal digits; wraps on overflow.
    func atoi(_ from: Int) -> Int64 {
        var i = from
        while isSpace(i) { i += 1 }
        var sign: Int64 = 1, num: Int64 = 0
        if self[i] == 0x2D { i += 1; sign = -1 } else if self[i] == 0x2B { i += 1 }
        while isDigit(i) { num = num &* 10 &+ Int64(self[i] - 0x30); i += 1 }
        return num &* sign
    }

    /// `kc::atoih`: leading whitespace, an optional `0x`, hexadecimal digits.
    func atoih(_ from: Int) -> Int64 {
        var i = from
        while isSpace(i) { i += 1 }
        if self[i] == 0x30 && (self[i + 1] == 0x78 || self[i + 1] == 0x58) { i += 2 }
        var num: Int64 = 0
        while true {
            let d: Int64
            switch UInt8(bitPattern: self[i]) {
            case 0x30...0x39: d = Int64(self[i] - 0x30)
            case 0x61...0x66: d = Int64(self[i] - 0x61 + 10)
            case 0x41...0x46: d = Int64(self[i] - 0x41 + 10)
            default: return num
            }
            num = num &* 16 &+ d
            i += 1
        }
    }

    /// `kc::strifwm`: whether the text at `i` starts with `key`, ignoring ASCII case.
    func startsWithIgnoringCase(_ i: Int, _ key: String) -> Bool {
        for (n, k) in key.utf8.enumerated() {
            var ch = self[i + n]
            if ch == 0 { return false }
            if ch >= 0x41 && ch <= 0x5A { ch += 0x20 }
            if UInt8(bitPattern: ch) != (k >= 0x41 && k <= 0x5A ? k + 0x20 : k) { return false }
        }
        return true
    }

    /// `strcmp(text + i, s) == 0`.
    func equals(_ i: Int, _ s: String) -> Bool {
        let b = Array(s.utf8)
        return strlen(i) == b.count && b.indices.allSatisfy { self[i + $0] == Int8(bitPattern: b[$0]) }
    }

    struct Fields {
        var year: Int64 = 70, month: Int64 = 0, day: Int64 = 1, hour: Int64 = 0, minute: Int64 = 0, second: Int64 = 0

        /// `timegm`, the fields truncated to C `int`s as KT's assignments to `struct tm` do.
        func gmtime() -> Int64 {
            var t = tm()
            t.tm_year = Int32(truncatingIfNeeded: year)
            t.tm_mon = Int32(truncatingIfNeeded: month)
            t.tm_mday = Int32(truncatingIfNeeded: day)
            t.tm_hour = Int32(truncatingIfNeeded: hour)
            t.tm_min = Int32(truncatingIfNeeded: minute)
            t.tm_sec = Int32(truncatingIfNeeded: second)
            return Int64(timegm(&t))
        }
    }

    func make() -> Int64? {
        var s = 0
        while isSpace(s) { s += 1 }
        if self[s] == 0 { return nil }
        if self[s] == 0x30 && (self[s + 1] == 0x78 || self[s + 1] == 0x58) { return atoih(s + 2) }
        let len = strlen(s)
        let t = atoi(s)
        var pv = s
        while isDigit(pv) { pv += 1 }
        while isSpace(pv) { pv += 1 }
        if self[pv] == 0 { return t }
        let unitEnds = self[pv + 1] >= 0 && self[pv + 1] <= 0x20
        if unitEnds {
            switch self[pv] {
            case 0x73, 0x53: return t
            case 0x6D, 0x4D: return t &* 60
            case 0x68, 0x48: return t &* 3_600
            case 0x64, 0x44: return t &* 86_400
            default: break
            }
        }
        if len > 4 && self[s + 4] == 0x2D { return dated(s, separator: 0x2D, beforeTime: 0x54) }
        if len > 4 && self[s + 4] == 0x2F { return dated(s, separator: 0x2F, beforeTime: 0x20) }
        return rfc1123(s, len: len)
    }

    /// `YYYY-MM-DDThh:mm:ss[.frac][±hh:mm]` (or with `/` and a space), any prefix of it.
    func dated(_ s: Int, separator: UInt8, beforeTime: UInt8) -> Int64 {
        var f = Fields()
        f.year = atoi(s) &- 1900
        guard let p1 = strchr(s, separator), p1 - s == 4 else { return f.gmtime() }
        var rp = p1 + 1
        f.month = atoi(rp) &- 1
        guard let p2 = strchr(rp, separator), p2 - s == 7 else { return f.gmtime() }
        rp = p2 + 1
        f.day = atoi(rp)
        guard let p3 = strchr(rp, beforeTime), p3 - s == 10 else { return f.gmtime() }
        rp = p3 + 1
        f.hour = atoi(rp)
        if let p = strchr(rp, 0x3A), p - s == 13 {
            rp = p + 1
            f.minute = atoi(rp)
        }
        if let p = strchr(rp, 0x3A), p - s == 16 {
            rp = p + 1
            f.second = atoi(rp)
        }
        if let p = strchr(rp, 0x2E), p - s >= 19 { rp = p + 1 }
        var pv = rp
        while isDigit(pv) { pv += 1 }
        if (self[pv] == 0x2B || self[pv] == 0x2D) && strlen(pv) >= 6 && self[pv + 3] == 0x3A {
            let offset = (atoi(pv + 1) &* 3_600 &+ atoi(pv + 4) &* 60) &* (self[pv] == 0x2B ? 1 : -1)
            f.second = Int64(Int32(truncatingIfNeeded: f.second &- offset))
        }
        return f.gmtime()
    }

    static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    static let zones: [(String, Int64)] = [("JST", 9), ("CCT", 8), ("KST", 9), ("EDT", -4), ("EST", -5), ("CDT", -5), ("CST", -6),
                                           ("MDT", -6), ("MST", -7), ("PDT", -7), ("PST", -8), ("HDT", -9), ("HST", -10)]

    /// `[Www,] DD Mon YYYY [hh:mm:ss [±hhmm|ZONE]]`.
    func rfc1123(_ s: Int, len: Int) -> Int64? {
        var f = Fields()
        var crp = s
        if len >= 4 && self[s + 3] == 0x2C { crp = s + 4 }
        while self[crp] == 0x20 { crp += 1 }
        f.day = Int64(Int32(truncatingIfNeeded: atoi(crp)))
        while isDigit(crp) || self[crp] == 0x20 { crp += 1 }
        f.month = Int64(Self.months.firstIndex { startsWithIgnoringCase(crp, $0) } ?? -1)
        if f.month >= 0 { crp += 3 }
        while self[crp] == 0x20 { crp += 1 }
        f.year = Int64(Int32(truncatingIfNeeded: atoi(crp)))
        if f.year >= 1969 { f.year &-= 1900 }
        while isDigit(crp) { crp += 1 }
        while self[crp] == 0x20 { crp += 1 }
        guard f.day > 0 && f.month >= 0 && f.year >= 0 else { return nil }
        let clen = strlen(crp)
        if clen >= 8 && self[crp + 2] == 0x3A && self[crp + 5] == 0x3A {
            f.hour = atoi(crp)
            f.minute = atoi(crp + 3)
            f.second = Int64(Int32(truncatingIfNeeded: atoi(crp + 6)))
            if clen >= 14 && self[crp + 8] == 0x20 && (self[crp + 9] == 0x2B || self[crp + 9] == 0x2D) {
                let digits = (10...13).map { Int64(self[crp + $0]) - 0x30 }
                let offset = (digits[0] &* 36_000 &+ digits[1] &* 3_600 &+ digits[2] &* 600 &+ digits[3] &* 60) &* (self[crp + 9] == 0x2B ? 1 : -1)
                f.second = Int64(Int32(truncatingIfNeeded: f.second &- offset))
            } else if clen > 9, let zone = Self.zones.first(where: { equals(crp + 9, $0.0) }) {
                f.second &-= zone.1 &* 3_600
            }
        }
        return f.gmtime()
    }
}
