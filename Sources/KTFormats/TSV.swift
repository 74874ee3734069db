import NIOCore

/// KT's HTTP RPC bodies: tab-separated `name<TAB>value` lines, optionally with every column
/// encoded (`text/tab-separated-values; colenc=B|Q|U`). Parameters form a map: a repeated
/// name keeps its last value; replies list names in byte order.
public enum KTTSV {
    public static let mediaType = "text/tab-separated-values"
    public static let formMediaType = "application/x-www-form-urlencoded"

    /// How a request body is to be read, from its content type.
    public enum BodyKind: Sendable, Equatable {
        case tsv(KTColumnEncoding?)
        case form
        case other
    }

    /// Classifies a `Content-Type` value (KT matches prefixes, case-insensitively).
    public static func bodyKind(contentType: String) -> BodyKind {
        let lower = contentType.lowercased()
        if lower.hasPrefix(formMediaType) { return .form }
        guard lower.hasPrefix(mediaType) else { return .other }
        var encoding: KTColumnEncoding?
        for part in lower.dropFirst(mediaType.count).split(whereSeparator: { $0 == ";" || $0 == " " }) {
            guard part.hasPrefix("colenc=") else { continue }
            var value = part.dropFirst("colenc=".count)
            if value.first == "\"" { value = value.dropFirst() }
            if let c = value.utf8.first, let e = KTColumnEncoding(letter: c) { encoding = e }
        }
        return .tsv(encoding)
    }

    /// Parses a TSV body into `(name, value)` lines in order, decoding both columns.
    /// Lines without a tab are skipped; a trailing CR is dropped.
    public static func parse(_ body: [UInt8], encoding: KTColumnEncoding?) -> [(name: [UInt8], value: [UInt8])] {
        var out: [(name: [UInt8], value: [UInt8])] = []
        forEachPair(body, encoding: encoding) { out.append(($0, $1)) }
        return out
    }

    /// `parse`, one line at a time, building nothing but each line's two columns (a
    /// million-record body held a million slices, then a million pairs, before its map).
    public static func forEachPair(_ body: [UInt8], encoding: KTColumnEncoding?, _ pair: ([UInt8], [UInt8]) -> Void) {
        var start = body.startIndex
        while start < body.endIndex {
            let end = body[start...].firstIndex(of: 0x0A) ?? body.endIndex
            var line = body[start..<end]
            start = end + 1
            if line.last == 0x0D { line = line.dropLast() }
            guard let tab = line.firstIndex(of: 0x09) else { continue }
            let name = line[line.startIndex..<tab], value = line[line.index(after: tab)...]
            if let encoding {
                pair(encoding.decode(Array(name)), encoding.decode(Array(value)))
            } else {
                pair(Array(name), Array(value))
            }
        }
    }

    /// Parses `a=b&c=d` (or `;`-separated) form data, URL-decoding names and values.
    public static func parseForm<C: Collection>(_ text: C) -> [(name: [UInt8], value: [UInt8])] where C.Element == UInt8 {
        var out: [(name: [UInt8], value: [UInt8])] = []
        forEachFormPair(text) { out.append(($0, $1)) }
        return out
    }

    /// `parseForm`, one field at a time.
    public static func forEachFormPair<C: Collection>(_ text: C, _ pair: ([UInt8], [UInt8]) -> Void) where C.Element == UInt8 {
        var rest = text[...]
        while !rest.isEmpty {
            let end = rest.firstIndex { $0 == UInt8(ascii: "&") || $0 == UInt8(ascii: ";") } ?? rest.endIndex
            var field = rest[rest.startIndex..<end]
            rest = end == rest.endIndex ? rest[end...] : rest[rest.index(after: end)...]
            while let f = field.first, f > 0, f <= 0x20 { field = field.dropFirst() }
            guard !field.isEmpty else { continue }
            if let eq = field.firstIndex(of: UInt8(ascii: "=")) {
                pair(KTColumnEncoding.urlDecode(field[field.startIndex..<eq]), KTColumnEncoding.urlDecode(field[field.index(after: eq)...]))
            } else {
                pair(KTColumnEncoding.urlDecode(field), [])
            }
        }
    }

    /// Whether a reply holding `bytes` gets a column encoding (`bestEncoding` is not nil):
    /// over 255 bytes, or a control byte among them.
    public static func needsEncoding(_ bytes: UnsafeRawBufferPointer) -> Bool {
        bytes.count > 255 || bytes.contains { $0 < 0x20 || $0 == 0x7F }
    }

    /// The encoding KT picks for a reply: none while every byte is printable, otherwise
    /// base64 or URL encoding, whichever is estimated shorter (KT's `checkmapenc`).
    public static func bestEncoding<S: Sequence>(for pairs: S) -> KTColumnEncoding?
    where S.Element == (key: [UInt8], value: [UInt8]) {
        var estimate = EncodingEstimate()
        for (k, v) in pairs {
            k.withUnsafeBytes { estimate.account($0) }
            v.withUnsafeBytes { estimate.account($0) }
        }
        return estimate.encoding
    }

    /// KT's estimate (`checkmapenc`) of a reply's columns, one column at a time, in place.
    public struct EncodingEstimate: Sendable {
        private var binary = false
        private var base64Length = 0
        private var urlLength = 0

        public init() {
            assert(Self.classes.utf8CodeUnitCount == 256, "one class for each byte value")
        }

        public mutating func account(_ bytes: UnsafeRawBufferPointer) {
            var size = bytes.count
            if size > 255 {
                size = 255
                binary = true
            }
            base64Length += size * 6 / 4 + 3
            // Each byte's class from a table in constant data: bit 0 URL-escaped (not
            // `countsAsURLSafe`), bit 1 a control byte.
            let table = Self.classes.utf8Start
            var escaped = 0, control: UInt8 = 0
            for i in 0..<size {
                let k = table[Int(bytes[i])] &- 0x30
                escaped &+= Int(k & 1)
                control |= k
            }
            if control & 2 != 0 { binary = true }
            urlLength += size + 2 * escaped
        }

        /// Byte classes as ASCII digits, one per byte value: 1 URL-escaped, 2 control, 3
        /// both, 0 neither (`ColumnEncodingTests` checks it against KT's definitions).
        static let classes: StaticString = """
            3333333333333333333333333333333310111110000110010000000000111111\
            1000000000000000000000000001111010000000000000000000000000011103\
            1111111111111111111111111111111111111111111111111111111111111111\
            1111111111111111111111111111111111111111111111111111111111111111
            """

        /// The encoding KT picks for the columns accounted for.
        public var encoding: KTColumnEncoding? {
            guard binary else { return nil }
            return base64Length < urlLength ? .base64 : .url
        }
    }

    /// Sorts pairs by name in byte order, as KT's reply maps are.
    public static func sorted(_ map: [[UInt8]: [UInt8]]) -> [(key: [UInt8], value: [UInt8])] {
        map.sorted { $0.key.lexicographicallyPrecedes($1.key) }
    }

    /// Serializes a reply: names in byte order, columns encoded with `encoding`.
    public static func serialize(_ pairs: [(key: [UInt8], value: [UInt8])], encoding: KTColumnEncoding?) -> [UInt8] {
        var out: [UInt8] = []
        for (k, v) in pairs {
            if let encoding {
                out += encoding.encode(k)
                out.append(0x09)
                out += encoding.encode(v)
            } else {
                out += k
                out.append(0x09)
                out += v
            }
            out.append(0x0A)
        }
        return out
    }

    /// The content type of a reply in `encoding`.
    public static func contentType(_ encoding: KTColumnEncoding?) -> String {
        switch encoding {
        case nil: return mediaType
        case .base64?: return "text/tab-separated-values; colenc=B"
        case .quotedPrintable?: return "text/tab-separated-values; colenc=Q"
        case .url?: return "text/tab-separated-values; colenc=U"
        }
    }

    /// Encodes a reply map the way KT does: sorted, with the best encoding. KT encodes its
    /// reply map into a new map (`tsvmapencode`), so an encoded reply is in the order of the
    /// encoded names: in URL encoding `%e3%82%ad` comes before `ab`.
    /// `reply`'s bytes written straight into a buffer of their size: each value copied once,
    /// encoded as it is written (a reply of large values was encoded into new pairs, then
    /// serialized, then copied again: up to seven times its values' bytes at once).
    public static func replyBuffer(_ map: [[UInt8]: [UInt8]]) -> (contentType: String, body: ByteBuffer) {
        let pairs = sorted(map)
        let encoding = bestEncoding(for: pairs)
        // The names encoded (they are short), in the order of the encoded names, as KT writes them.
        let rows = encoding.map { e in pairs.map { (name: e.encode($0.key), value: $0.value) }.sorted { $0.name.lexicographicallyPrecedes($1.name) } }
            ?? pairs.map { (name: $0.key, value: $0.value) }
        func valueCount(_ v: [UInt8]) -> Int { encoding.map { e in v.withUnsafeBytes { e.encodedCount($0) } } ?? v.count }
        var size = 0
        for r in rows { size += r.name.count + 2 + valueCount(r.value) }
        var out = ByteBufferAllocator().buffer(capacity: size)
        for r in rows {
            out.writeBytes(r.name)
            out.writeInteger(UInt8(0x09))
            if let encoding {
                out.writeWithUnsafeMutableBytes(minimumWritableBytes: valueCount(r.value)) { dst in r.value.withUnsafeBytes { encoding.encode($0, into: dst) } }
            } else {
                out.writeBytes(r.value)
            }
            out.writeInteger(UInt8(0x0A))
        }
        return (contentType(encoding), out)
    }

    public static func reply(_ map: [[UInt8]: [UInt8]]) -> (contentType: String, body: [UInt8]) {
        let pairs = sorted(map)
        guard let encoding = bestEncoding(for: pairs) else { return (contentType(nil), serialize(pairs, encoding: nil)) }
        let encoded = pairs.map { (key: encoding.encode($0.key), value: encoding.encode($0.value)) }
            .sorted { $0.key.lexicographicallyPrecedes($1.key) }
        return (contentType(encoding), serialize(encoded, encoding: nil))
    }
}
