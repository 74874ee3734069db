import Foundation

/// The parameters of a KT RPC call, merged like KT merges them: the URL query first, then
/// the body (form data, or TSV in the column encoding its content type names); a later
/// value for the same name wins.
public struct KTRPCParameters: Sendable {
    public private(set) var values: [[UInt8]: [UInt8]] = [:]

    public init(query: ArraySlice<UInt8>?, contentType: String?, body: [UInt8]) {
        if let query { KTTSV.forEachFormPair(query) { values[$0] = $1 } }
        guard let contentType else { return }
        switch KTTSV.bodyKind(contentType: contentType) {
        case .form: KTTSV.forEachFormPair(body) { values[$0] = $1 }
        case let .tsv(encoding): KTTSV.forEachPair(body, encoding: encoding) { values[$0] = $1 }
        case .other: break
        }
    }

    public subscript(_ name: String) -> [UInt8]? { values[Array(name.utf8)] }

    /// At least as many as the entries (of any name) a parse of the query and body builds:
    /// its lines (TSV) or fields (form data), counted in one pass without decoding. What a
    /// parse holds grows with this, not with the body's bytes alone (qsrest holds an
    /// estimate of it against its budget before it parses: a 30 MB body of 2.5 M short
    /// lines built 800 MB).
    public static func entryBound(query: ArraySlice<UInt8>?, contentType: String?, body: [UInt8]) -> Int {
        func fields<C: Collection>(_ text: C) -> Int where C.Element == UInt8 {
            text.isEmpty ? 0 : 1 + text.reduce(0) { $0 + ($1 == 0x26 || $1 == 0x3B ? 1 : 0) }
        }
        let inQuery = query.map(fields) ?? 0
        guard let contentType else { return inQuery }
        switch KTTSV.bodyKind(contentType: contentType) {
        case .other: return inQuery
        case .form: return inQuery + fields(body)
        case .tsv: return inQuery + (body.isEmpty ? 0 : 1 + body.reduce(0) { $0 + ($1 == 0x0A ? 1 : 0) })
        }
    }

    /// The memory a parse of these parameters builds, at most (each entry's map slot, its
    /// name's and value's arrays, and the bytes again), estimated in one pass from
    /// `entryBound` without building anything. Measured: a 30 MB body of 2.5 M short lines
    /// with empty values built about 90 bytes an entry beyond its bytes (release build),
    /// 1.6 M lines of 9-byte names and 10-byte values 1.16 times what 128 an entry gave (a
    /// review's count of malloc's bytes): 176. Servers hold this against their budget for
    /// request bodies while the parse and its work run.
    public static func parseBytes(query: ArraySlice<UInt8>?, contentType: String?, body: [UInt8]) -> (entries: Int, bytes: Int) {
        let entries = entryBound(query: query, contentType: contentType, body: body)
        // Nothing parsed, nothing decoded (a body whose content type is not parsed).
        return (entries, entries * parseBytesPerEntry + (entries > 0 ? body.count : 0))
    }

    /// `parseBytes`' estimate of an entry's memory beyond its bytes.
    public static let parseBytesPerEntry = 176

    /// At least as many as the records (`underscored`) a body holds, counted in one pass
    /// over its bytes without decoding or building anything: the entries whose name can
    /// start with `_` as it is encoded (base64 names starting with `X`, since `_` is
    /// 0x5F). A bulk request over a producer's quota is refused on this before it is parsed
    /// (a parse builds about 27 bytes per body byte).
    public static func recordBound(contentType: String?, body: [UInt8]) -> Int {
        guard let contentType else { return 0 }
        func mayBeUnderscore(_ at: Int, _ encoding: KTColumnEncoding?) -> Bool {
            guard at < body.count else { return false }
            let b = body[at]
            func escaped(_ mark: UInt8) -> Bool {
                b == mark && at + 2 < body.count && body[at + 1] == 0x35 && (body[at + 2] | 0x20) == 0x66
            }
            switch encoding {
            case nil: return b == 0x5F
            case .base64?: return b == 0x58
            case .quotedPrintable?: return b == 0x5F || escaped(0x3D)
            case .url?: return b == 0x5F || escaped(0x25)
            }
        }
        var n = 0
        switch KTTSV.bodyKind(contentType: contentType) {
        case .other: return 0
        case .form:
            var start = true
            for i in body.indices {
                let b = body[i]
                if b == 0x26 || b == 0x3B { start = true; continue }
                if start && b > 0 && b <= 0x20 { continue }
                if start && mayBeUnderscore(i, .url) { n += 1 }
                start = false
            }
        case let .tsv(encoding):
            var i = 0
            while i < body.count {
                if mayBeUnderscore(i, encoding) { n += 1 }
                guard let nl = body[i...].firstIndex(of: 0x0A) else { break }
                i = nl + 1
            }
        }
        return n
    }

    /// Entries whose name starts with `_` (the bulk procedures' records), the `_` dropped,
    /// in key order.
    public var underscored: [(key: [UInt8], value: [UInt8])] {
        records({ (Array($0), $1) }, by: { $0.key.lexicographicallyPrecedes($1.key) })
    }

    /// The records (`underscored`), each made into what the caller keeps of it (`make` is
    /// given the name without its `_`, and the value), ordered by `order`, which must order
    /// them by key; nothing else is built on the way (a bulk request's million records
    /// were built three times over beside the map they came from).
    public func records<T>(_ make: (ArraySlice<UInt8>, [UInt8]) -> T, by order: (T, T) -> Bool) -> [T] {
        var out: [T] = []
        out.reserveCapacity(values.count)
        for (k, v) in values where k.first == UInt8(ascii: "_") { out.append(make(k.dropFirst(), v)) }
        out.sort(by: order)
        return out
    }
}

/// HTTP reason phrases as KT's server writes them (450 is KT's own), with those qsrest adds.
public enum KTHTTPStatus {
    public static func reason(_ code: Int) -> String {
        switch code {
        case 200: return "OK"
        case 201: return "Created"
        case 204: return "No Content"
        case 400: return "Bad Request"
        case 401: return "Unauthorized"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 413: return "Request Entity Too Large"
        case 429: return "Too Many Requests"
        case 450: return "Logical Inconsistency"
        case 500: return "Internal Server Error"
        case 501: return "Not Implemented"
        case 503: return "Service Unavailable"
        default: return "Unknown"
        }
    }
}
