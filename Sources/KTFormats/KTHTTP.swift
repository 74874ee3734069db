import Foundation

/// The parameters of a KT RPC call, merged like KT merges them: the URL query first, then
/// the body (form data, or TSV in the column encoding its content type names); a later
/// value for the same name wins.
public struct KTRPCParameters: Sendable {
    public private(set) var values: [[UInt8]: [UInt8]] = [:]

    public init(query: ArraySlice<UInt8>?, contentType: String?, body: [UInt8]) {
        if let query { merge(KTTSV.parseForm(query)) }
        guard let contentType else { return }
        switch KTTSV.bodyKind(contentType: contentType) {
        case .form: merge(KTTSV.parseForm(body))
        case let .tsv(encoding): merge(KTTSV.parse(body, encoding: encoding))
        case .other: break
        }
    }

    private mutating func merge(_ pairs: [(name: [UInt8], value: [UInt8])]) {
        for (n, v) in pairs { values[n] = v }
    }

    public subscript(_ name: String) -> [UInt8]? { values[Array(name.utf8)] }

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
        values.compactMap { k, v in k.first == UInt8(ascii: "_") ? (Array(k.dropFirst()), v) : nil }
            .sorted { $0.key.lexicographicallyPrecedes($1.key) }
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
