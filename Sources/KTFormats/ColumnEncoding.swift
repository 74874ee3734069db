/// The column encodings of KT's TSV bodies (`colenc=B|Q|U` in the content type).
public enum KTColumnEncoding: UInt8, Sendable, CaseIterable {
    /// Base64, with `=` padding.
    case base64 = 0x42 // "B"
    /// Quoted-printable: `=XX` (upper-case hex) for `=`, control bytes and bytes ≥ 0x7F.
    case quotedPrintable = 0x51 // "Q"
    /// URL encoding: `%xx` (lower-case hex) for all but letters, digits and `_-.~`
    /// (Kyoto Cabinet's `urlencode`).
    case url = 0x55 // "U"

    /// The letter used in `colenc=`.
    public var letter: Character { Character(Unicode.Scalar(rawValue)) }

    /// Parses a `colenc` letter, either case.
    public init?(letter: UInt8) {
        switch letter {
        case 0x42, 0x62: self = .base64
        case 0x51, 0x71: self = .quotedPrintable
        case 0x55, 0x75: self = .url
        default: return nil
        }
    }

    public func encode(_ bytes: [UInt8]) -> [UInt8] {
        bytes.withUnsafeBytes { input in
            [UInt8](unsafeUninitializedCapacity: encodedCount(input)) { out, count in
                count = encode(input, into: UnsafeMutableRawBufferPointer(out))
            }
        }
    }

    /// The most bytes `bytes` can take in a reply, whichever encoding (or none) its reply
    /// gets: for holding a reply's bytes before its encoding is known (`KTTSV`'s choice looks
    /// at each column's first 255 bytes only, so a long value can be written URL-encoded at
    /// three times its size).
    public static func mostEncodedCount(_ bytes: UnsafeRawBufferPointer) -> Int {
        // (A reply is written as it is, base64 or URL-encoded: `EncodingEstimate.encoding`.)
        max(bytes.count, url.encodedCount(bytes), base64.encodedCount(bytes))
    }

    /// How many bytes `bytes` take encoded.
    public func encodedCount(_ bytes: UnsafeRawBufferPointer) -> Int {
        switch self {
        case .base64: return (bytes.count + 2) / 3 * 4
        case .quotedPrintable: return bytes.reduce(0) { $0 + (Self.quotes($1) ? 3 : 1) }
        case .url: return bytes.reduce(0) { $0 + (Self.isURLSafe($1) ? 1 : 3) }
        }
    }

    /// Encodes `bytes` into `out` (at least `encodedCount(bytes)` bytes): the number of
    /// bytes written. Nothing is allocated (the read servers' hot path).
    public func encode(_ bytes: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer) -> Int {
        switch self {
        case .base64: return Base64.encode(bytes, into: out)
        case .quotedPrintable: return Self.escape(bytes, into: out, marker: UInt8(ascii: "="), upper: true, keep: { !Self.quotes($0) })
        case .url: return Self.escape(bytes, into: out, marker: UInt8(ascii: "%"), upper: false, keep: Self.isURLSafe)
        }
    }

    /// Quoted-printable's and URL encoding's shape: a byte kept, or `marker` and two hex digits.
    @inline(__always)
    private static func escape(_ bytes: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer, marker: UInt8,
                               upper: Bool, keep: (UInt8) -> Bool) -> Int {
        var n = 0
        for c in bytes {
            if keep(c) {
                out[n] = c
                n += 1
            } else {
                out[n] = marker
                out[n + 1] = hexDigit(c >> 4, upper: upper)
                out[n + 2] = hexDigit(c & 0x0F, upper: upper)
                n += 3
            }
        }
        return n
    }

    /// Whether quoted-printable escapes `c`.
    static func quotes(_ c: UInt8) -> Bool { c == UInt8(ascii: "=") || c < 0x20 || c > 0x7E }

    /// Decodes leniently, the way KT does: invalid characters are skipped, never fatal.
    public func decode(_ text: [UInt8]) -> [UInt8] {
        switch self {
        case .base64: return Base64.decode(text)
        case .quotedPrintable: return Self.quoteDecode(text)
        case .url: return Self.urlDecode(text)
        }
    }

    /// The hex digit of `v` (0…15): `0-9A-F`, or `0-9a-f` when not `upper`. (Arithmetic,
    /// not a table: a global array costs a lazy-initialisation check and a retain per use.)
    @inline(__always)
    static func hexDigit(_ v: UInt8, upper: Bool) -> UInt8 {
        v < 10 ? 0x30 &+ v : (upper ? 0x37 : 0x57) &+ v
    }

    /// Whether bit `c` is set in the 128-bit set `low` (bytes 0…63) and `high` (64…127);
    /// no byte from 128 on is in it.
    @inline(__always)
    static func inSet(_ c: UInt8, low: UInt64, high: UInt64) -> Bool {
        c < 64 ? (low >> UInt64(c)) & 1 != 0 : c < 128 && (high >> UInt64(c &- 64)) & 1 != 0
    }

    /// Whether URL encoding leaves `c` as it is (Kyoto Cabinet's `urlencode`: letters,
    /// digits and `_-.~`; a `*` is sent as `%2a`).
    @inline(__always)
    static func isURLSafe(_ c: UInt8) -> Bool {
        // `A-Z a-z 0-9 _ - . ~` as bits (ColumnEncodingTests checks the sets byte by byte).
        inSet(c, low: 0x03FF_6000_0000_0000, high: 0x47FF_FFFE_87FF_FFFE)
    }

    /// Whether KT's estimate of a reply's URL-encoded length (`checkmapenc`) counts `c` as
    /// one byte: letters, digits and `_-.!~*'()`, a wider set than `urlencode` leaves alone.
    @inline(__always)
    static func countsAsURLSafe(_ c: UInt8) -> Bool {
        // `isURLSafe`'s set and `! * ' ( )`.
        inSet(c, low: 0x03FF_6782_0000_0000, high: 0x47FF_FFFE_87FF_FFFE)
    }

    public static func urlEncode(_ bytes: [UInt8]) -> [UInt8] { Self.url.encode(bytes) }

    static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x41...0x46: return c - 0x41 + 10
        case 0x61...0x66: return c - 0x61 + 10
        default: return nil
        }
    }

    /// URL decoding as KT does it: `%xx`, `+` as space, control bytes and spaces dropped.
    public static func urlDecode<C: Collection>(_ text: C) -> [UInt8] where C.Element == UInt8 {
        let t = Array(text)
        return t.withUnsafeBytes { input in
            [UInt8](unsafeUninitializedCapacity: input.count) { out, count in
                count = urlDecode(input, into: UnsafeMutableRawBufferPointer(out))
            }
        }
    }

    /// `urlDecode` into `out` (at least `text.count` bytes, the most it can take): the
    /// number of bytes written. Nothing is allocated (the read servers' hot path).
    public static func urlDecode(_ t: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer) -> Int {
        var n = 0
        var i = 0
        while i < t.count {
            let c = t[i]
            if c == UInt8(ascii: "%") {
                guard i + 1 < t.count else { break }
                var num = hexValue(t[i + 1]) ?? 0
                guard i + 2 < t.count else { break }
                num = num &* 16 &+ (hexValue(t[i + 2]) ?? 0)
                out[n] = num
                n += 1
                i += 3
            } else if c == UInt8(ascii: "+") {
                out[n] = 0x20
                n += 1
                i += 1
            } else if c <= 0x20 || c == 0x7F {
                i += 1
            } else {
                out[n] = c
                n += 1
                i += 1
            }
        }
        return n
    }

    static func quoteDecode(_ t: [UInt8]) -> [UInt8] {
        // At most the text's length: reserved once (grown by doubling, a large column held
        // up to twice what the request's budget counted for it).
        var out: [UInt8] = []
        out.reserveCapacity(t.count)
        var i = 0
        while i < t.count {
            let c = t[i]
            if c == UInt8(ascii: "=") {
                if i + 1 < t.count, t[i + 1] == 0x0D || t[i + 1] == 0x0A {
                    // soft line break
                    i += 2
                    if i < t.count, t[i - 1] == 0x0D, t[i] == 0x0A { i += 1 }
                    continue
                }
                guard i + 2 < t.count, let h = hexValue(t[i + 1]), let l = hexValue(t[i + 2]) else { break }
                out.append(h << 4 | l)
                i += 3
            } else if c == 0x0D || c == 0x0A {
                i += 1
            } else {
                out.append(c)
                i += 1
            }
        }
        return out
    }
}

/// Standard base64 with padding; decoding skips characters outside the alphabet.
public enum Base64 {
    /// The alphabet in the binary's constant data (a global array would cost a lazy-
    /// initialisation check and a retain per use).
    static let alphabet: StaticString = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    public static func encode(_ bytes: [UInt8]) -> [UInt8] { KTColumnEncoding.base64.encode(bytes) }

    /// Encodes `bytes` into `out` (at least `(bytes.count + 2) / 3 * 4` bytes): the number
    /// of bytes written.
    static func encode(_ bytes: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer) -> Int {
        let a = alphabet.utf8Start
        let count = bytes.count, whole = count - count % 3
        var i = 0, n = 0
        precondition(out.count >= (count + 2) / 3 * 4, "Base64.encode: the output is too small")
        while i < whole {
            let b0 = bytes[i], b1 = bytes[i + 1], b2 = bytes[i + 2]
            out[n] = a[Int(b0 >> 2)]
            out[n + 1] = a[Int((b0 & 0x03) << 4 | b1 >> 4)]
            out[n + 2] = a[Int((b1 & 0x0F) << 2 | b2 >> 6)]
            out[n + 3] = a[Int(b2 & 0x3F)]
            i += 3
            n += 4
        }
        if i < count {
            let b0 = bytes[i]
            let b1: UInt8 = i + 1 < count ? bytes[i + 1] : 0
            out[n] = a[Int(b0 >> 2)]
            out[n + 1] = a[Int((b0 & 0x03) << 4 | b1 >> 4)]
            out[n + 2] = i + 1 < count ? a[Int((b1 & 0x0F) << 2)] : UInt8(ascii: "=")
            out[n + 3] = UInt8(ascii: "=")
            n += 4
        }
        return n
    }

    static func value(_ c: UInt8) -> UInt32? {
        switch c {
        case 0x41...0x5A: return UInt32(c - 0x41)
        case 0x61...0x7A: return UInt32(c - 0x61 + 26)
        case 0x30...0x39: return UInt32(c - 0x30 + 52)
        case UInt8(ascii: "+"), UInt8(ascii: "-"): return 62
        case UInt8(ascii: "/"), UInt8(ascii: "_"): return 63
        default: return nil
        }
    }

    public static func decode<C: Collection>(_ text: C) -> [UInt8] where C.Element == UInt8 {
        // At most three bytes for every four characters: reserved once (see `quoteDecode`).
        var out: [UInt8] = []
        out.reserveCapacity(text.count / 4 * 3 + 3)
        var acc: UInt32 = 0
        var bits = 0
        for c in text {
            if c == UInt8(ascii: "=") { break }
            guard let v = value(c) else { continue }
            acc = acc << 6 | v
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(truncatingIfNeeded: acc >> UInt32(bits)))
            }
        }
        return out
    }
}
