import KTFormats
import QSModel
import QSStore

/// KT's RESTful interface, read side: `GET /KEY` and `HEAD /KEY`, the key URL-encoded,
/// optionally under a database (`/DB/KEY`, DB an index or a name). `PUT` and `DELETE` are
/// refused; other methods get 501 with an empty body, as from KT.
struct KTRESTRead: Sendable {
    let databases: KTDatabaseMap
    let clock: ReadClock

    enum Method: Sendable { case get, head, put, delete, other }

    func call(_ method: Method, path: ArraySlice<UInt8>, in txn: borrowing StoreTransaction) throws -> KTReply {
        var rest = path
        if rest.first == UInt8(ascii: "/") { rest = rest.dropFirst() }
        var db = databases.database(index: 0)
        if let slash = rest.firstIndex(of: UInt8(ascii: "/")) {
            let dbExpr = KTColumnEncoding.urlDecode(rest[rest.startIndex..<slash])
            rest = rest[rest.index(after: slash)...]
            if rest.first == UInt8(ascii: "/") { rest = rest.dropFirst() }
            if !dbExpr.isEmpty { db = databases.database(forParameter: dbExpr) }
        }
        guard let db else {
            return KTReply(status: 400, body: Array("\(KTMessages.noSuchDatabase)\n".utf8), kind: "rest",
                           badReason: "REST: no such database")
        }
        let key = KTColumnEncoding.urlDecode(rest)
        switch method {
        case .get, .head:
            let kind = method == .get ? "rest_get" : "rest_head"
            let full = db.prefix + key
            guard databases.owns(db, key: full), let record = try txn.get(full), !record.isExpired(at: clock()) else {
                return KTReply(status: 404, headers: [("X-Kt-Error", KTMessages.noRecord)], kind: kind)
            }
            var headers = [(String, String)]()
            if let xt = record.expiry, xt < UInt64(KTExpiration.never) { headers.append(("X-Kt-Xt", httpDate(xt))) }
            if method == .head { headers.append(("Content-Length", "\(record.value.count)")) }
            return KTReply(status: 200, headers: headers, body: method == .get ? record.value : [], kind: kind)
        case .put, .delete:
            return KTReply(status: 501, headers: [("X-Kt-Error", KTMessages.readOnly)], kind: "write",
                           refusedWrite: method == .put ? "PUT" : "DELETE")
        case .other:
            return KTReply(status: 501, kind: "unknown", badReason: "REST: unsupported method")
        }
    }
}
