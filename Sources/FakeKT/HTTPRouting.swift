import Foundation
import KTFormats
import NIOHTTP1

extension FakeKTCore {
    static let adminPath = "/_fakekt/faults"

    /// Answers one HTTP request: RPC under `/rpc/`, the admin call, or RESTful access.
    func http(_ request: KTHTTPRequest, connection: UInt64, serverName: String, peer: String) -> KTHTTPResponse {
        let (path, query) = Self.splitURI(request.uri)
        if path.hasPrefix("/rpc/") {
            return rpcOverHTTP(request, name: String(path.dropFirst(5)), query: query, connection: connection, peer: peer)
        }
        if path == Self.adminPath {
            return admin(request, query: query)
        }
        return rest(request, path: path, serverName: serverName)
    }

    static func splitURI(_ uri: String) -> (path: String, query: String?) {
        guard let q = uri.firstIndex(of: "?") else { return (uri, nil) }
        return (String(uri[..<q]), String(uri[uri.index(after: q)...]))
    }

    private func rpcOverHTTP(_ request: KTHTTPRequest, name rawName: String, query: String?, connection: UInt64, peer: String) -> KTHTTPResponse {
        let name = String(decoding: KTColumnEncoding.urlDecode(Array(rawName.utf8)), as: UTF8.self)
        var map: [[UInt8]: [UInt8]] = [:]
        if let query {
            for (k, v) in KTTSV.parseForm(Array(query.utf8)) { map[k] = v }
        }
        if let contentType = request.headers.first(name: "content-type") {
            switch KTTSV.bodyKind(contentType: contentType) {
            case .form:
                for (k, v) in KTTSV.parseForm(request.body) { map[k] = v }
            case .tsv(let encoding):
                for (k, v) in KTTSV.parse(request.body, encoding: encoding) { map[k] = v }
            case .other:
                break
            }
        }
        let result = rpc(name, RPCParams(map: map), connection: connection)
        if result.status == 400 || result.status == 501 {
            logger.info("rejected rpc", metadata: ["peer": "\(peer)", "procedure": "\(name)", "status": "\(result.status)"])
            if result.status == 400 { malformedCounter.increment() }
        }
        let reply = KTTSV.reply(result.out)
        return KTHTTPResponse(status: result.status, headers: [("Content-Type", reply.contentType)], body: reply.body)
    }

    private func rest(_ request: KTHTTPRequest, path: String, serverName: String) -> KTHTTPResponse {
        var p = Substring(path)
        if p.first == "/" { p = p.dropFirst() }
        var db = 0
        if let slash = p.firstIndex(of: "/") {
            let expr = KTColumnEncoding.urlDecode(Array(p[..<slash].utf8))
            p = p[p.index(after: slash)...]
            if p.first == "/" { p = p.dropFirst() }
            if !expr.isEmpty {
                db = withStore { $0.databaseIndex(expr) } ?? -1
            }
        }
        let dbCount = withStore { $0.databases.count }
        guard db >= 0, db < dbCount else {
            return KTHTTPResponse(status: 400, body: Array("no such database\n".utf8))
        }
        let key = KTColumnEncoding.urlDecode(Array(p.utf8))
        func xtHeader(_ xt: Int64) -> [(String, String)] {
            xt < KTExpiration.never ? [("X-Kt-Xt", HTTPDate.format(epochSeconds: xt))] : []
        }
        switch request.method {
        case .GET, .HEAD:
            let outcome: Result<KTRecord, KTDBError> = withStore { store in
                do throws(KTDBError) { return .success(try store.get(db: db, key: key)) } catch { return .failure(error) }
            }
            switch outcome {
            case .success(let r):
                if request.method == .HEAD {
                    return KTHTTPResponse(status: 200, headers: xtHeader(r.expiration), announcedLength: r.value.count)
                }
                return KTHTTPResponse(status: 200, headers: xtHeader(r.expiration), body: r.value)
            case .failure(let error):
                return KTHTTPResponse(status: 404, headers: [("X-Kt-Error", error.text)])
            }
        case .PUT:
            var xt: Int64? = nil
            if let h = request.headers.first(name: "x-kt-xt"), let t = KTHTTPDate.parse(h), t > 0, t < KTExpiration.never {
                xt = -t
            }
            let mode = request.headers.first(name: "x-kt-mode")?.lowercased()
            let outcome: Result<Void, KTDBError> = withStore { store in
                do throws(KTDBError) {
                    switch mode {
                    case "add": try store.add(db: db, key: key, value: request.body, xt: xt)
                    case "replace": try store.replace(db: db, key: key, value: request.body, xt: xt)
                    default: store.set(db: db, key: key, value: request.body, xt: xt)
                    }
                    return .success(())
                } catch { return .failure(error) }
            }
            switch outcome {
            case .success: return KTHTTPResponse(status: 201, headers: [("Location", "http://\(serverName)\(path)")])
            case .failure(let error): return KTHTTPResponse(status: 450, headers: [("X-Kt-Error", error.text)])
            }
        case .DELETE:
            let outcome: Result<Void, KTDBError> = withStore { store in
                do throws(KTDBError) { try store.remove(db: db, key: key); return .success(()) } catch { return .failure(error) }
            }
            switch outcome {
            case .success: return KTHTTPResponse(status: 204)
            case .failure(let error): return KTHTTPResponse(status: 404, headers: [("X-Kt-Error", error.text)])
            }
        default:
            return KTHTTPResponse(status: 501)
        }
    }

    /// `GET /_fakekt/faults` shows the fault plan; `POST` (form body or query) changes it.
    private func admin(_ request: KTHTTPRequest, query: String?) -> KTHTTPResponse {
        let now = nowMillis()
        var settings: [(String, String)] = []
        if let query { settings += KTTSV.parseForm(Array(query.utf8)).map { (String(decoding: $0.name, as: UTF8.self), String(decoding: $0.value, as: UTF8.self)) } }
        if request.method == .POST {
            settings += KTTSV.parseForm(request.body).map { (String(decoding: $0.name, as: UTF8.self), String(decoding: $0.value, as: UTF8.self)) }
        }
        let errors = faults.withLockedValue { $0.apply(settings, nowMillis: now) }
        if !errors.isEmpty {
            return KTHTTPResponse(status: 400, headers: [("Content-Type", "text/plain")], body: Array((errors.joined(separator: "\n") + "\n").utf8))
        }
        if !settings.isEmpty { logger.notice("fault plan changed", metadata: ["faults": "\(settings)"]) }
        let text = faults.withLockedValue { $0.describe(nowMillis: now) }
        return KTHTTPResponse(status: 200, headers: [("Content-Type", "text/plain")], body: Array(text.utf8))
    }
}
