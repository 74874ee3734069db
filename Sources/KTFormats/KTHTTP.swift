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
