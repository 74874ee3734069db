import KTFormats
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import QSNet
import QSStore

/// What the KT HTTP interface answers, shared by every connection of one server. A
/// request is read in one read transaction: inline on the connection's event loop when it
/// is a bounded lookup (`get`, `check`, `get_bulk`, `void`, `echo`, RESTful GET and HEAD:
/// a few B-tree lookups that never wait, see `MemcachedSession`), on the store's reader
/// threads when it scans (`match_prefix`, `match_regex`, `status`, `report`).
struct KTHTTPSession: Sendable {
    let store: Store
    let procedures: KTProcedures
    let rest: KTRESTRead
    let metrics: ReadMetrics
    let logger: Logger
    let maxBodyBytes: Int
    let counters: KindCounters
    /// The counters of the requests `answerInPlace` answers, resolved once.
    let restGetCounter, rpcGetCounter: Counter
    /// One KT database, unprefixed (`KTDatabaseMap.single`): a key is the stored key.
    let plainKeys: Bool

    init(store: Store, procedures: KTProcedures, rest: KTRESTRead, metrics: ReadMetrics, logger: Logger, maxBodyBytes: Int) {
        self.store = store
        self.procedures = procedures
        self.rest = rest
        self.metrics = metrics
        self.logger = logger
        self.maxBodyBytes = maxBodyBytes
        counters = KindCounters(metrics, kinds: KTProcedures.reads.union(["write", "unknown", "bad", "error", "rest", "rest_get", "rest_head"]))
        restGetCounter = counters["rest_get"]
        rpcGetCounter = counters["get"]
        plainKeys = rest.databases.databases.count == 1 && rest.databases.databases[0].index == 0 && rest.databases.databases[0].prefix.isEmpty
    }

    static let rpcGetPrefix = Array("/rpc/get?key=".utf8)
    static let valueColumn = Array("value\t".utf8)

    /// The two reads that matter for speed, answered in place: `GET /KEY` and
    /// `GET /rpc/get?key=KEY` (the key URL-encoded, nothing else in the query) of a live
    /// record without an expiry, on a node serving one unprefixed KT database, keep-alive.
    /// The key is decoded on the stack, read in the event loop's transaction (`slot`) and
    /// the value copied from LMDB's map straight into the body. Anything else — another
    /// request, a missing or expiring record, a value KT would column-encode — gives nil
    /// and the general path (`plan`) answers it, the same way as before.
    func answerInPlace(_ head: HTTPRequestHead, slot: ReadSlot, allocator: ByteBufferAllocator) -> (HTTPResponseHead, ByteBuffer, Counter)? {
        guard plainKeys, head.method == .GET, head.isKeepAlive else { return nil }
        var uri = head.uri
        return uri.withUTF8 { u -> (HTTPResponseHead, ByteBuffer, Counter)? in
            let raw = UnsafeRawBufferPointer(u)
            let rpc = raw.starts(with: Self.rpcGetPrefix)
            let encoded: UnsafeRawBufferPointer
            if rpc {
                encoded = UnsafeRawBufferPointer(rebasing: raw[Self.rpcGetPrefix.count...])
                guard !encoded.contains(where: { $0 == UInt8(ascii: "&") || $0 == UInt8(ascii: ";") }) else { return nil }
            } else {
                guard raw.count > 1, raw[0] == UInt8(ascii: "/") else { return nil }
                encoded = UnsafeRawBufferPointer(rebasing: raw[1...])
                guard !encoded.contains(where: { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?") }) else { return nil }
            }
            return withUnsafeTemporaryAllocation(byteCount: encoded.count, alignment: 1) { space -> (HTTPResponseHead, ByteBuffer, Counter)? in
                let key = UnsafeRawBufferPointer(rebasing: space[..<KTColumnEncoding.urlDecode(encoded, into: space)])
                let body = try? store.readInline(in: slot) { txn in
                    try txn.withRecord(bytes: key) { record -> ByteBuffer? in
                        guard let record, record.expiry == nil else { return nil }
                        if rpc && KTTSV.needsEncoding(record.value) { return nil }
                        var body = allocator.buffer(capacity: record.value.count + (rpc ? 7 : 0))
                        if rpc { body.writeBytes(Self.valueColumn) }
                        body.writeBytes(record.value)
                        if rpc { body.writeInteger(UInt8(ascii: "\n")) }
                        return body
                    }
                }
                guard let body else { return nil }
                var headers = HTTPHeaders()
                headers.add(name: "Content-Length", value: String(body.readableBytes))
                if rpc { headers.add(name: "Content-Type", value: KTTSV.mediaType) }
                return (HTTPResponseHead(version: head.version, status: .ok, headers: headers), body, rpc ? rpcGetCounter : restGetCounter)
            }
        }
    }

    /// Procedures answered inline on the event loop (bounded lookups).
    static let inlineProcedures: Set<String> = ["void", "echo", "get", "check", "get_bulk"]

    /// One request's work in a read transaction, and whether it runs inline.
    typealias Work = @Sendable (borrowing StoreTransaction) throws -> KTReply

    func plan(_ head: HTTPRequestHead, body: [UInt8]) -> (inline: Bool, work: Work) {
        let uri = Array(head.uri.utf8)[...]
        let q = uri.firstIndex(of: UInt8(ascii: "?"))
        let path = q.map { uri[..<$0] } ?? uri
        let query = q.map { uri[uri.index(after: $0)...] }
        let procedures = self.procedures, rest = self.rest
        if path.starts(with: Self.rpcPrefix) {
            let name = String(decoding: KTColumnEncoding.urlDecode(path.dropFirst(Self.rpcPrefix.count)), as: UTF8.self)
            let params = KTRPCParameters(query: query, contentType: head.headers.first(name: "content-type"), body: body)
            return (Self.inlineProcedures.contains(name) || !KTProcedures.reads.contains(name),
                    { txn in try procedures.call(name, params, in: txn) })
        }
        let method: KTRESTRead.Method = switch head.method {
        case .GET: .get
        case .HEAD: .head
        case .PUT: .put
        case .DELETE: .delete
        default: .other
        }
        return (true, { txn in try rest.call(method, path: path, in: txn) })
    }

    static let rpcPrefix = Array("/rpc/".utf8)

    /// The reply to a request whose read failed.
    func failure(_ error: any Error, head: HTTPRequestHead, peer: String) -> KTReply {
        logger.error("KT HTTP request failed", metadata: ["peer": "\(peer)", "uri": "\(head.uri.prefix(200))", "error": "\(error)"])
        return KTReply(map: [Array("ERROR".utf8): Array("internal error: \(error)".utf8)], status: 500, kind: "error")
    }

    func account(_ r: KTReply, peer: String, head: HTTPRequestHead) {
        counters[r.kind].increment()
        if let reason = r.badReason {
            metrics.bad(logger, peer: peer, reason: reason, ["status": "\(r.status)", "uri": "\(head.uri.prefix(200))"])
        }
        if let what = r.refusedWrite {
            metrics.refusedWrite(logger, peer: peer, write: what)
        }
    }

    /// The response's head: KT's status line and headers.
    static func responseHead(_ r: KTReply, for head: HTTPRequestHead, keepAlive: Bool) -> HTTPResponseHead {
        var headers = HTTPHeaders()
        let isHead = head.method == .HEAD
        if !isHead { headers.add(name: "Content-Length", value: String(r.body.count)) }
        for (n, v) in r.headers { headers.add(name: n, value: v) }
        if isHead && !headers.contains(name: "Content-Length") { headers.add(name: "Content-Length", value: "0") }
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        return HTTPResponseHead(version: head.version, status: HTTPResponseStatus(statusCode: r.status, reasonPhrase: KTHTTPStatus.reason(r.status)),
                                headers: headers)
    }
}

/// `qs_<interface>_requests_total{command}` for a fixed set of kinds, resolved once (a
/// kind outside the set is counted as "unknown").
struct KindCounters: Sendable {
    private let byKind: [String: Counter]
    private let unknown: Counter

    init(_ metrics: ReadMetrics, kinds: Set<String>) {
        var m = [String: Counter]()
        for k in kinds { m[k] = metrics.requests(k) }
        byKind = m
        unknown = m["unknown"] ?? metrics.requests("unknown")
    }

    subscript(kind: String) -> Counter { byKind[kind] ?? unknown }
}

/// One KT HTTP connection, behind NIO's HTTP server pipeline (which keeps pipelined
/// requests in order: the next request arrives once this one's response has ended, and
/// drains the connection on shutdown). Bodies are capped at `maxBodyBytes` (413 and close
/// beyond); a request that does not parse is answered 400 and the connection closed.
final class KTHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let session: KTHTTPSession
    private let peer: String
    /// The event loop's read transaction, renewed for each inline read.
    private let slot: ReadSlot
    private var head: HTTPRequestHead?
    private var body = ByteBuffer()
    private var tooLarge = false

    init(session: KTHTTPSession, peer: String, slot: ReadSlot) {
        self.session = session
        self.peer = peer
        self.slot = slot
    }

    func handlerAdded(context: ChannelHandlerContext) { session.metrics.opened() }
    func handlerRemoved(context: ChannelHandlerContext) { session.metrics.closed() }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case let .head(h):
            head = h
            body.clear()
            tooLarge = false
        case var .body(chunk):
            if body.readableBytes + chunk.readableBytes > session.maxBodyBytes {
                tooLarge = true
            } else if !tooLarge {
                body.writeBuffer(&chunk)
            }
        case .end:
            guard let h = head else { return }
            head = nil
            if tooLarge {
                respond(context, KTReply(status: 413, body: Array("413 Request Entity Too Large (request entity too large)\n".utf8),
                                         kind: "bad", badReason: "request body over \(session.maxBodyBytes) bytes"),
                        to: h, keepAlive: false)
                return
            }
            if body.readableBytes == 0, let (responseHead, reply, counter) = session.answerInPlace(h, slot: slot, allocator: context.channel.allocator) {
                counter.increment()
                send(context, responseHead, body: reply, keepAlive: true)
                return
            }
            let (inline, work) = session.plan(h, body: Array(body.readableBytesView))
            if inline {
                let r: KTReply
                do { r = try session.store.readInline(in: slot, work) } catch { r = session.failure(error, head: h, peer: peer) }
                respond(context, r, to: h, keepAlive: h.isKeepAlive)
            } else {
                let store = session.store, session = self.session, peer = self.peer
                let promise = context.eventLoop.makePromise(of: KTReply.self)
                promise.completeWithTask {
                    do { return try await store.read(work) } catch { return session.failure(error, head: h, peer: peer) }
                }
                promise.futureResult.assumeIsolated().whenSuccess { r in
                    self.respond(context, r, to: h, keepAlive: h.isKeepAlive)
                }
            }
        }
    }

    private func respond(_ context: ChannelHandlerContext, _ r: KTReply, to h: HTTPRequestHead, keepAlive: Bool) {
        session.account(r, peer: peer, head: h)
        var buffer: ByteBuffer?
        if h.method != .HEAD && !r.body.isEmpty {
            buffer = context.channel.allocator.buffer(capacity: r.body.count)
            buffer?.writeBytes(r.body)
        }
        send(context, KTHTTPSession.responseHead(r, for: h, keepAlive: keepAlive), body: buffer, keepAlive: keepAlive)
    }

    /// Writes a response and flushes it once (closing the connection after it unless kept alive).
    private func send(_ context: ChannelHandlerContext, _ head: HTTPResponseHead, body: ByteBuffer?, keepAlive: Bool) {
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        if let body { context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
        if keepAlive {
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        } else {
            context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? HTTPParserError {
            session.counters["bad"].increment()
            session.metrics.bad(session.logger, peer: peer, reason: "unparsable HTTP: \(error)")
            // What NIO's HTTPServerProtocolErrorHandler answers (no response is under way:
            // the pipeline handler delivers a parse error after the responses before it).
            let headers = HTTPHeaders([("Connection", "close"), ("Content-Length", "0")])
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .badRequest, headers: headers))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        } else {
            session.logger.debug("KT HTTP connection ended with an error", metadata: ["peer": "\(peer)", "error": "\(error)"])
        }
        context.close(promise: nil)
    }
}
