import KTFormats

/// The parameters of a KT RPC call, merged like KT merges them: the URL query first, then
/// the body (form data, or TSV in the column encoding its content type names); a later
/// value for the same name wins.
struct KTRPCParameters: Sendable {
    private(set) var values: [[UInt8]: [UInt8]] = [:]

    init(query: ArraySlice<UInt8>?, contentType: String?, body: [UInt8]) {
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

    subscript(_ name: String) -> [UInt8]? { values[Array(name.utf8)] }
}
