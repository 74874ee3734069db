import KTFormats
import Logging
import NIOCore
import NIOHTTP1
import QSNet
import QSStore

/// Serves one KT HTTP connection: requests in order (HTTP pipelining is kept in order by
/// NIO's pipelining handler), bodies capped at `maxBodyBytes` (413 and close beyond),
/// each procedure runs in one read transaction on the store's reader threads.
struct KTHTTPSession: Sendable {
    let store: Store
    let procedures: KTProcedures
    let rest: KTRESTRead
    let metrics: ReadMetrics
    let logger: Logger
    let maxBodyBytes: Int

    typealias Connection = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>

    func run(_ connection: Connection, peer: String, drain: RequestDrain?) async {
        metrics.opened()
        defer { metrics.closed() }
        do {
            try await connection.executeThenClose { inbound, outbound in
                try await HTTPRequests.serve(inbound, maxBodyBytes: maxBodyBytes, drain: drain) { h in
                    let r = KTReply(status: 413, body: Array("413 Request Entity Too Large (request entity too large)\n".utf8),
                                    kind: "bad", badReason: "request body over \(maxBodyBytes) bytes")
                    account(r, peer: peer, head: h)
                    try await write(r, head: h, keepAlive: false, outbound: outbound)
                } answer: { h, body in
                    let r = await answer(h, body: body, peer: peer)
                    account(r, peer: peer, head: h)
                    try await write(r, head: h, keepAlive: h.isKeepAlive, outbound: outbound)
                    return h.isKeepAlive
                }
            }
        } catch let error as HTTPParserError {
            metrics.requests("bad").increment()
            metrics.bad(logger, peer: peer, reason: "unparsable HTTP: \(error)")
        } catch {
            logger.debug("KT HTTP connection ended with an error", metadata: ["peer": "\(peer)", "error": "\(error)"])
        }
    }

    private func answer(_ head: HTTPRequestHead, body: [UInt8], peer: String) async -> KTReply {
        let uri = Array(head.uri.utf8)[...]
        let q = uri.firstIndex(of: UInt8(ascii: "?"))
        let path = q.map { uri[..<$0] } ?? uri
        let query = q.map { uri[uri.index(after: $0)...] }
        let rpcPrefix = Array("/rpc/".utf8)
        let procedures = self.procedures, rest = self.rest
        do {
            if path.starts(with: rpcPrefix) {
                let name = String(decoding: KTColumnEncoding.urlDecode(path.dropFirst(rpcPrefix.count)), as: UTF8.self)
                let params = KTRPCParameters(query: query, contentType: head.headers.first(name: "content-type"), body: body)
                return try await store.read { txn in try procedures.call(name, params, in: txn) }
            }
            let method: KTRESTRead.Method = switch head.method {
            case .GET: .get
            case .HEAD: .head
            case .PUT: .put
            case .DELETE: .delete
            default: .other
            }
            return try await store.read { txn in try rest.call(method, path: path, in: txn) }
        } catch {
            logger.error("KT HTTP request failed", metadata: ["peer": "\(peer)", "uri": "\(head.uri.prefix(200))", "error": "\(error)"])
            return KTReply(map: [Array("ERROR".utf8): Array("internal error: \(error)".utf8)], status: 500, kind: "error")
        }
    }

    private func account(_ r: KTReply, peer: String, head: HTTPRequestHead) {
        metrics.requests(r.kind).increment()
        if let reason = r.badReason {
            metrics.bad(logger, peer: peer, reason: reason, ["status": "\(r.status)", "uri": "\(head.uri.prefix(200))"])
        }
        if let what = r.refusedWrite {
            metrics.refusedWrite(logger, peer: peer, write: what)
        }
    }

    private func write(_ r: KTReply, head: HTTPRequestHead, keepAlive: Bool,
                       outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>) async throws {
        var headers = HTTPHeaders()
        let isHead = head.method == .HEAD
        if !isHead { headers.add(name: "Content-Length", value: "\(r.body.count)") }
        for (n, v) in r.headers { headers.add(name: n, value: v) }
        if isHead && !headers.contains(name: "Content-Length") { headers.add(name: "Content-Length", value: "0") }
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        let status = HTTPResponseStatus(statusCode: r.status, reasonPhrase: KTHTTPStatus.reason(r.status))
        try await outbound.write(.head(HTTPResponseHead(version: head.version, status: status, headers: headers)))
        if !isHead && !r.body.isEmpty { try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: r.body)))) }
        try await outbound.write(.end(nil))
    }
}
