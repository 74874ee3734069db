import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import KTFormats
import QSClient
import QSModel
import QSKTFeed
import QSNet

/// Compares a QS node with a KT server's contents over KT's HTTP RPC: walks each mapped
/// KT database with a cursor and looks every record up in QS, then walks each QS prefix
/// and checks every key exists in KT. Streams both ways, KT's calls pipelined a page at a
/// time on one keep-alive connection; prints each difference as a JSON line and returns
/// how many there were.
struct KTVerifier {
    let node: NodeOptions
    let kt: Endpoint
    let prefixes: [UInt16: [UInt8]]
    let instant: UInt64
    let output: OutputFormat
    /// QS key prefixes left out on both sides (a qsrest ACL's producers: their keys are
    /// written to QS directly, no longer through KT).
    var excluded: [[UInt8]] = []

    func isExcluded(_ key: [UInt8]) -> Bool { excluded.contains { key.starts(with: $0) } }

    struct KTError: Error, CustomStringConvertible {
        let description: String
    }

    /// KT calls pipelined per round trip.
    static let page = 500

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
        var leftOut = 0
        guard case let .tcp(host, port) = kt else { throw KTError(description: "--kt \(kt) is not HOST:PORT: KT's RPC is reached over TCP") }
        let rpc = KTRPCClient(host: host, port: port, timeout: .seconds(30))
        try await node.withClient { client in
            try await rpc.withConnection { kt in
                // KT → QS: every KT record must be in QS with the same value and expiry.
                for (db, prefix) in prefixes.sorted(by: { $0.key < $1.key }) {
                    let dbParam = ("DB", Array(String(db).utf8))
                    // One cursor id per database: a KT cursor stays on the database it was made for.
                    let cur = ("CUR", Array(String(1 + db).utf8))
                    var more = try await kt.call("cur_jump", [dbParam, cur]).status == 200
                    let step = KTRPCCall("cur_get", [dbParam, cur, ("step", Array("true".utf8))])
                    while more {
                        for rec in try await kt.pipeline(Array(repeating: step, count: Self.page)) {
                            guard rec.status == 200, let key = rec["key"], let value = rec["value"] else {
                                more = false
                                break
                            }
                            var xt = rec.string("xt").flatMap { UInt64($0) }
                            if let x = xt, x >= KTExpiration.never { xt = nil }
                            if let x = xt, x <= instant { continue }
                            if isExcluded(prefix + key) {
                                leftOut += 1
                                continue
                            }
                            checked += 1
                            let qs = try await client.get(prefix + key)
                            let want = Record(value: value, expiry: xt)
                            if qs != want {
                                // Gone from QS because it expired after KT listed it: not a difference.
                                if qs == nil, let x = xt, x <= wallClockSeconds() { continue }
                                differences += 1
                                difference(prefix + key, kt: side(value, xt), qs: side(qs?.value, qs?.expiry))
                            }
                        }
                    }
                }
                // QS → KT: every QS key under a mapped prefix must exist in KT.
                for (db, prefix) in prefixes {
                    let longer = prefixes.values.filter { $0.count > prefix.count && $0.starts(with: prefix) }
                    var cursor = [UInt8]()
                    repeat {
                        let page = try await client.scan(prefix: prefix, cursor: cursor, limit: UInt32(Self.page), asOf: instant)
                        let records = page.records.filter { r in !longer.contains(where: { r.key.starts(with: $0) }) && !isExcluded(r.key) }
                        let checks = records.map { r in
                            KTRPCCall("check", [("DB", Array(String(db).utf8)), ("key", Array(r.key.dropFirst(prefix.count)))])
                        }
                        for (r, answer) in zip(records, try await kt.pipeline(checks)) where answer.status == 450 {
                            // Gone from KT because it expired after the scan's instant: not a difference.
                            if let x = r.record.expiry, x <= wallClockSeconds() { continue }
                            differences += 1
                            difference(r.key, kt: side(nil, nil), qs: side(r.record.value, r.record.expiry))
                        }
                        cursor = page.next ?? []
                    } while !cursor.isEmpty
                }
            }
        }
        fail("checked \(checked) KT records; \(differences) differences"
             + (excluded.isEmpty ? "" : "; \(leftOut) KT records under the producers' prefixes of --exclude-acl left out (and QS keys under them)"))
        return differences
    }
}
