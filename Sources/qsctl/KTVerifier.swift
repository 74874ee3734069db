import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import KTFormats
import QSClient
import QSModel
import QSNet

/// Compares a QS node with a KT server's contents over KT's HTTP RPC: walks each mapped
/// KT database with a cursor and looks every record up in QS, then walks each QS prefix
/// and checks every key exists in KT. Streams both ways; prints each difference as a JSON
/// line and returns how many there were.
struct KTVerifier {
    let node: NodeOptions
    let kt: Endpoint
    let prefixes: [UInt16: [UInt8]]
    let instant: UInt64
    let output: OutputFormat

    struct KTError: Error, CustomStringConvertible {
        let description: String
    }

    func rpc(_ procedure: String, _ params: [(String, [UInt8])]) async throws -> (Int, [[UInt8]: [UInt8]]) {
        var request = URLRequest(url: URL(string: "http://\(kt)/rpc/\(procedure)")!)
        request.httpMethod = "POST"
        request.setValue("text/tab-separated-values; colenc=B", forHTTPHeaderField: "Content-Type")
        var body = [UInt8]()
        for (k, v) in params {
            body += KTColumnEncoding.base64.encode(Array(k.utf8)) + [9] + KTColumnEncoding.base64.encode(v) + [10]
        }
        request.httpBody = Data(body)
        let (data, response) = try await URLSession.shared.data(for: request)
        let status = (response as? HTTPURLResponse)?.statusCode ?? 0
        let contentType = (response as? HTTPURLResponse)?.value(forHTTPHeaderField: "Content-Type") ?? ""
        var out = [[UInt8]: [UInt8]]()
        if case let .tsv(encoding) = KTTSV.bodyKind(contentType: contentType) {
            for (name, value) in KTTSV.parse([UInt8](data), encoding: encoding) { out[name] = value }
        }
        return (status, out)
    }

    /// A record on one side as JSON (value base64) and as text (value escaped).
    func side(_ value: [UInt8]?, _ xt: UInt64?) -> (json: String, table: String) {
        guard let value else { return ("null", "absent") }
        return ("{\"value\":\"\(b64(value))\",\"xt\":\(xt.map { String($0) } ?? "null")}",
                "\(printable(value))\(xt.map { " (xt \($0))" } ?? "")")
    }

    func run() async throws -> Int {
        var out = Output(output, listing: true)
        defer { out.finish() }
        func difference(_ key: [UInt8], kt: (json: String, table: String), qs: (json: String, table: String)) {
            out.item(json: "{\"key\":\"\(b64(key))\",\"kt\":\(kt.json),\"qs\":\(qs.json)}",
                     table: "\(printable(key))\tkt: \(kt.table)\tqs: \(qs.table)")
        }
        var differences = 0
        var checked = 0
        try await node.withClient { client in
            // KT → QS: every KT record must be in QS with the same value and expiry.
            for (db, prefix) in prefixes.sorted(by: { $0.key < $1.key }) {
                let dbParam = ("DB", Array(String(db).utf8))
                // One cursor id per database: a KT cursor stays on the database it was made for.
                let cur = ("CUR", Array(String(1 + db).utf8))
                var (status, _) = try await rpc("cur_jump", [dbParam, cur])
                while status == 200 {
                    let (s, rec) = try await rpc("cur_get", [dbParam, cur, ("step", Array("true".utf8))])
                    status = s
                    guard s == 200, let key = rec[Array("key".utf8)], let value = rec[Array("value".utf8)] else { break }
                    var xt = rec[Array("xt".utf8)].flatMap { UInt64(String(decoding: $0, as: UTF8.self)) }
                    if let x = xt, x >= KTExpiration.never { xt = nil }
                    if let x = xt, x <= instant { continue }
                    checked += 1
                    let qs = try await client.get(prefix + key)
                    let want = Record(value: value, expiry: xt)
                    if qs != want {
                        differences += 1
                        difference(prefix + key, kt: side(value, xt), qs: side(qs?.value, qs?.expiry))
                    }
                }
            }
            // QS → KT: every QS key under a mapped prefix must exist in KT.
            for (db, prefix) in prefixes {
                let longer = prefixes.values.filter { $0.count > prefix.count && $0.starts(with: prefix) }
                var cursor = [UInt8]()
                repeat {
                    let page = try await client.scan(prefix: prefix, cursor: cursor, limit: 1000, asOf: instant)
                    for r in page.records where !longer.contains(where: { r.key.starts(with: $0) }) {
                        let ktKey = Array(r.key.dropFirst(prefix.count))
                        let (status, _) = try await rpc("check", [("DB", Array(String(db).utf8)), ("key", ktKey)])
                        if status == 450 {
                            differences += 1
                            difference(r.key, kt: side(nil, nil), qs: side(r.record.value, r.record.expiry))
                        }
                    }
                    cursor = page.next ?? []
                } while !cursor.isEmpty
            }
        }
        fail("checked \(checked) KT records; \(differences) differences")
        return differences
    }
}
