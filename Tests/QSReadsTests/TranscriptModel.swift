import Foundation
import KTFormats
import QSModel
import QSStore

/// One recorded exchange of `rpc.jsonl` or `memcached.jsonl`.
struct RecordedExchange {
    var method: String
    var path: String
    var headers: [String: String]
    var body: [UInt8]
    var status: Int
    var responseHeaders: [String: String]
    var responseBody: [UInt8]

    static func loadRPC(_ url: URL) throws -> [RecordedExchange] {
        try lines(url).map { j in
            let q = j["request"] as? [String: Any] ?? [:], s = j["response"] as? [String: Any] ?? [:]
            return RecordedExchange(method: q["method"] as? String ?? "", path: q["path"] as? String ?? "",
                                    headers: q["headers"] as? [String: String] ?? [:], body: b64(q["body_b64"]),
                                    status: s["status"] as? Int ?? 0, responseHeaders: s["headers"] as? [String: String] ?? [:],
                                    responseBody: b64(s["body_b64"]))
        }
    }

    static func loadMemcached(_ url: URL) throws -> [(request: [UInt8], response: [UInt8])] {
        try lines(url).map { (b64($0["request_b64"]), b64($0["response_b64"])) }
    }

    private static func lines(_ url: URL) throws -> [[String: Any]] {
        try String(contentsOf: url, encoding: .utf8).split(separator: "\n").compactMap {
            try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }

    private static func b64(_ v: Any?) -> [UInt8] {
        (v as? String).flatMap { Data(base64Encoded: $0) }.map { [UInt8]($0) } ?? []
    }

    /// The RPC parameters, decoded as KT decodes them.
    var parameters: [[UInt8]: [UInt8]] {
        var out = [[UInt8]: [UInt8]]()
        if case let .tsv(enc) = KTTSV.bodyKind(contentType: headers["Content-Type"] ?? "") {
            for (n, v) in KTTSV.parse(body, encoding: enc) { out[n] = v }
        }
        return out
    }
}

/// Replays the writes of the transcripts with KT's semantics, as the store operations a
/// bridge would have carried into QS. Whether a write took effect is read from KT's
/// recorded answer, so the model never guesses a failure.
struct TranscriptWriteModel {
    let recordedAt: UInt64
    var state: [[UInt8]: Record] = [:]

    /// The operations for one RPC/REST exchange (empty for reads and failed writes).
    mutating func operations(for x: RecordedExchange) -> [Mutation] {
        let ok = (200..<300).contains(x.status)
        guard ok else { return [] }
        let p = x.parameters
        func param(_ n: String) -> [UInt8]? { p[Array(n.utf8)] }
        func xt() -> UInt64? {
            guard let raw = param("xt") else { return nil }
            let v = KTExpiration.parseInteger(raw)
            return UInt64(KTExpiration.stored(requested: v, now: Int64(recordedAt)))
        }
        if x.path.hasPrefix("/rpc/") {
            let name = String(x.path.dropFirst(5))
            guard let key = param("key") ?? (name.hasSuffix("_bulk") ? [] : nil) else { return [] }
            switch name {
            case "set", "add", "replace":
                return set(key, param("value") ?? [], xt())
            case "append":
                return set(key, (state[key]?.value ?? []) + (param("value") ?? []), xt())
            case "increment":
                let n = UInt64(bitPattern: KTExpiration.parseInteger(KTTSV.parse(x.responseBody, encoding: nil).first?.value ?? []))
                return set(key, (0..<8).map { UInt8(truncatingIfNeeded: n >> (56 - 8 * UInt64($0))) }, nil)
            case "increment_double":
                // KT stores a 16-byte fixed-point number; no read of the transcript returns it.
                return set(key, Array(KTTSV.parse(x.responseBody, encoding: nil).first?.value ?? []), nil)
            case "cas":
                if let nv = param("nval") { return set(key, nv, xt()) }
                return remove(key)
            case "remove", "seize":
                return remove(key)
            case "set_bulk":
                return p.filter { $0.key.first == UInt8(ascii: "_") }.sorted { $0.key.lexicographicallyPrecedes($1.key) }
                    .flatMap { set(Array($0.key.dropFirst()), $0.value, xt()) }
            case "remove_bulk":
                return p.keys.filter { $0.first == UInt8(ascii: "_") }.flatMap { remove(Array($0.dropFirst())) }
            default:
                return []
            }
        }
        let key = KTColumnEncoding.urlDecode(Array(x.path.utf8).dropFirst())
        switch x.method {
        case "PUT": return set(key, x.body, nil)
        case "DELETE": return remove(key)
        default: return []
        }
    }

    /// The operations for one memcached exchange with KT's plug-in (`opts=f`: flags are
    /// the value's last 4 bytes, big-endian).
    mutating func memcachedOperations(request: [UInt8], response: [UInt8]) -> [Mutation] {
        guard let lf = request.firstIndex(of: 10) else { return [] }
        let tokens = request[..<lf].split(whereSeparator: { $0 == 32 || $0 == 13 }).map { Array($0) }
        guard let cmd = tokens.first.map({ String(decoding: $0, as: UTF8.self) }) else { return [] }
        let stored = response == Array("STORED\r\n".utf8) || (response.isEmpty && tokens.last == Array("noreply".utf8))
        switch cmd {
        case "set" where stored && tokens.count >= 5:
            guard let flags = UInt32(String(decoding: tokens[2], as: UTF8.self)),
                  let size = Int(String(decoding: tokens[4], as: UTF8.self)) else { return [] }
            let data = Array(request[(lf + 1)..<(lf + 1 + size)])
            let f = (0..<4).map { UInt8(truncatingIfNeeded: flags >> (24 - 8 * UInt32($0))) }
            return set(tokens[1], data + f, nil)
        case "delete" where response == Array("DELETED\r\n".utf8):
            return remove(tokens[1])
        default:
            return []
        }
    }

    private mutating func set(_ key: [UInt8], _ value: [UInt8], _ xt: UInt64?) -> [Mutation] {
        let expiry = xt.flatMap { $0 >= UInt64(KTExpiration.never) ? nil : $0 }
        state[key] = Record(value: value, expiry: expiry)
        return [.set(key: key, value: value, expiry: expiry)]
    }

    private mutating func remove(_ key: [UInt8]) -> [Mutation] {
        state[key] = nil
        return [.delete(key: key)]
    }
}
