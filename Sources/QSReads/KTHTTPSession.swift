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
/// threads when it scans (`match_prefix`, `match_regex`, `status`, `report`). A class: a
/// handler calling into a struct stored in it copies it, a retain and a release for each
/// of its references on every request (about 3,700 instructions under callgrind).
final class KTHTTPSession: Sendable {
    let store: Store
    let procedures: KTProcedures
    let rest: KTRESTRead
    let metrics: ReadMetrics
    let logger: Logger
    let maxBodyBytes: Int
    /// Bodies arriving on every connection of the listener, together.
    let pending: PendingBytes
    let counters: KindCounters
    /// The counters of the requests `answerInPlace` answers, resolved once.
    let restGetCounter, restHeadCounter, rpcGetCounter: Counter
    /// `qs_kt_http_handovers_total`: connections `KTFastHTTPHandler` gave to NIO's pipeline.
    let handovers = Counter(label: "qs_kt_http_handovers_total")
    /// One KT database, unprefixed (`KTDatabaseMap.single`): a key is the stored key.
    let plainKeys: Bool
    /// Scans on the store's reader threads, at most two at once (of four by default).
    let scans = ScanGate(limit: 2)

    /// The read ports' budget for large replies not yet read.
    let replyMemory: ReplyMemory

    init(store: Store, procedures: KTProcedures, rest: KTRESTRead, metrics: ReadMetrics, logger: Logger, maxBodyBytes: Int,
         pending: PendingBytes, replyMemory: ReplyMemory) {
        self.pending = pending
        self.replyMemory = replyMemory
        self.store = store
        self.procedures = procedures
        self.rest = rest
        self.metrics = metrics
        self.logger = logger
        self.maxBodyBytes = maxBodyBytes
        counters = KindCounters(metrics, kinds: KTProcedures.reads.union(["write", "unknown", "bad", "error", "rest", "rest_get", "rest_head", "abandoned"]))
        restGetCounter = counters["rest_get"]
        restHeadCounter = counters["rest_head"]
        rpcGetCounter = counters["get"]
        plainKeys = rest.databases.databases.count == 1 && rest.databases.databases[0].index == 0 && rest.databases.databases[0].prefix.isEmpty
    }

    static let rpcGetPrefix = Array("/rpc/get?key=".utf8)
    static let valueName = Array("value".utf8)

    /// The reads that matter for speed, answered in place: `GET`/`HEAD /KEY` and
    /// `GET /rpc/get?key=KEY` (the key URL-encoded, nothing else in the query) of a live
    /// record without an expiry, on a node serving one unprefixed KT database. The key is
    /// decoded on the stack and read in the event loop's transaction (`slot`); `head`
    /// writes what comes before the body into `out` (told the body's length and content
    /// type), then the value is copied from LMDB's map into `out` (column-encoded as KT
    /// would for `/rpc/get`). Anything else — another request, a missing or expiring
    /// record — gives nil with `out` as it was, and the general path (`plan`) answers it. A
    /// value the read ports' reply budget has no room for now gives nil with its size in
    /// `refused`: the caller answers `memoryRefusal` without building the reply.
    func answerInPlace(_ kind: KTFastRequest.Kind, target: UnsafeRawBufferPointer, slot: ReadSlot, into out: inout ByteBuffer,
                       refused: inout Int,
                       head: (inout ByteBuffer, _ contentLength: Int, _ contentType: String?) -> Void) -> Counter? {
        guard plainKeys else { return nil }
        let encoded: UnsafeRawBufferPointer
        switch kind {
        case .rpcGet:
            guard target.starts(with: Self.rpcGetPrefix) else { return nil }
            encoded = UnsafeRawBufferPointer(rebasing: target[Self.rpcGetPrefix.count...])
            guard !encoded.contains(where: { $0 == UInt8(ascii: "&") || $0 == UInt8(ascii: ";") }) else { return nil }
        case .restGet, .restHead:
            guard target.count > 1, target[0] == UInt8(ascii: "/") else { return nil }
            encoded = UnsafeRawBufferPointer(rebasing: target[1...])
            guard !encoded.contains(where: { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?") }) else { return nil }
        }
        let start = out.writerIndex
        // A large value is held while its reply is built, the check and the hold in one
        // step (reader threads each checked without the others'), given back once built:
        // the writer holds what the socket does not take at once.
        var building = GatheredReply(memory: replyMemory)
        defer { building.release() }
        let found = withUnsafeTemporaryAllocation(byteCount: encoded.count, alignment: 1) { space -> Bool in
            let key = UnsafeRawBufferPointer(rebasing: space[..<KTColumnEncoding.urlDecode(encoded, into: space)])
            return (try? store.readInline(in: slot) { txn in
                try txn.withRecord(bytes: key) { record -> Bool in
                    guard let record, record.expiry == nil else { return false }
                    // A large value the reply budget has no room for now: refused unbuilt.
                    guard kind == .restHead || building.add(record.value.count) else {
                        refused = record.value.count
                        return false
                    }
                    switch kind {
                    case .restGet:
                        head(&out, record.value.count, nil)
                        out.writeBytes(record.value)
                    case .restHead:
                        head(&out, record.value.count, nil)
                    case .rpcGet:
                        Self.writeValueReply(record.value, into: &out, head: head)
                    }
                    return true
                }
            }) ?? false
        }
        guard found else {
            out.moveWriterIndex(to: start)
            return nil
        }
        switch kind {
        case .restGet: return restGetCounter
        case .restHead: return restHeadCounter
        case .rpcGet: return rpcGetCounter
        }
    }

    /// `/rpc/get`'s reply of a record without an expiry, as `KTTSV.reply` makes it of
    /// `["value": value]`, written in place: `value<TAB>VALUE<LF>`, both columns encoded
    /// when KT would.
    static func writeValueReply(_ value: UnsafeRawBufferPointer, into out: inout ByteBuffer,
                                head: (inout ByteBuffer, Int, String?) -> Void) {
        var estimate = KTTSV.EncodingEstimate()
        valueName.withUnsafeBytes { estimate.account($0) }
        estimate.account(value)
        guard let encoding = estimate.encoding else {
            head(&out, valueName.count + value.count + 2, KTTSV.mediaType)
            out.writeBytes(valueName)
            out.writeInteger(UInt8(ascii: "\t"))
            out.writeBytes(value)
            out.writeInteger(UInt8(ascii: "\n"))
            return
        }
        let nameCount = valueName.withUnsafeBytes { encoding.encodedCount($0) }
        let valueCount = encoding.encodedCount(value)
        head(&out, nameCount + valueCount + 2, KTTSV.contentType(encoding))
        valueName.withUnsafeBytes { name in
            _ = out.writeWithUnsafeMutableBytes(minimumWritableBytes: nameCount) { encoding.encode(name, into: $0) }
        }
        out.writeInteger(UInt8(ascii: "\t"))
        out.writeWithUnsafeMutableBytes(minimumWritableBytes: valueCount) { encoding.encode(value, into: $0) }
        out.writeInteger(UInt8(ascii: "\n"))
    }

    /// Procedures answered inline on the event loop (bounded lookups).
    static let inlineProcedures: Set<String> = ["void", "echo", "get", "check", "get_bulk"]

    /// One request's work in a read transaction, and whether it runs inline.
    typealias Work = @Sendable (borrowing StoreTransaction) throws -> KTReply

    /// `offloaded`: the request is answered off the event loops whatever it is (its inline
    /// work threw `KTReplyNotInline`).
    /// `abandoned`: whether the client is gone, for the work that runs off the loops.
    func plan(_ method: HTTPMethod, uri: ArraySlice<UInt8>, contentType: String?, body: [UInt8], offloaded: Bool = false,
              abandoned: @escaping @Sendable () -> Bool = { false }) -> (inline: Bool, work: Work) {
        let q = uri.firstIndex(of: UInt8(ascii: "?"))
        let path = q.map { uri[..<$0] } ?? uri
        let query = q.map { uri[uri.index(after: $0)...] }
        let procedures = {
            var p = self.procedures
            p.abandoned = abandoned
            return p
        }()
        let rest = self.rest
        if let name = Self.procedure(uri) {
            guard KTProcedures.reads.contains(name) else {
                // Refused by its name (501, a write or unknown): its body is not parsed (a
                // 30 MB set_bulk sent to a read node was parsed among the scans first).
                let none = KTRPCParameters(query: nil, contentType: nil, body: [])
                return (true, { txn in try procedures.call(name, none, in: txn) })
            }
            // A large body is parsed where its work runs, off the event loop, among the
            // scans (a 30 MB get_bulk's parse held its loop, and every connection on it, 2 s).
            if body.count >= Self.offloadedBodyBytes {
                return (false, { txn in try procedures.call(name, KTRPCParameters(query: query, contentType: contentType, body: body), in: txn) })
            }
            let params = KTRPCParameters(query: query, contentType: contentType, body: body)
            if !offloaded, Self.inlineProcedures.contains(name) {
                let inline = procedures.inline
                return (true, { txn in try inline.call(name, params, in: txn) })
            }
            return (false, { txn in try procedures.call(name, params, in: txn) })
        }
        let method: KTRESTRead.Method = switch method {
        case .GET: .get
        case .HEAD: .head
        case .PUT: .put
        case .DELETE: .delete
        default: .other
        }
        return (true, { txn in try rest.call(method, path: path, in: txn) })
    }

    static let rpcPrefix = Array("/rpc/".utf8)

    /// The RPC procedure `uri` names (`/rpc/NAME?…`, URL-decoded), nil for any other path.
    static func procedure(_ uri: ArraySlice<UInt8>) -> String? {
        let path = uri.firstIndex(of: UInt8(ascii: "?")).map { uri[..<$0] } ?? uri
        guard path.starts(with: rpcPrefix) else { return nil }
        return String(decoding: KTColumnEncoding.urlDecode(path.dropFirst(rpcPrefix.count)), as: UTF8.self)
    }
    /// Bodies of this many bytes or more are parsed off the event loop (`plan`).
    static let offloadedBodyBytes = 64 << 10

    /// The reply to a request whose read failed.
    /// `r`, or 503 when its body is a large reply the read ports' budget has no room for
    /// now (`ReplyMemory`): counted and logged, the client told to try again.
    func fitted(_ r: KTReply, isHead: Bool, peer: String) -> KTReply {
        if isHead || r.held > 0 || replyMemory.admits(r.body.readableBytes) { return r }
        return memoryRefusal(kind: r.kind, bytes: r.body.readableBytes, peer: peer)
    }

    /// The bytes of the reply budget to hold for a body of `bytes` about to be written,
    /// until the socket has taken it: the whole body if it is large, from `held` (what its
    /// reply took as it was gathered, `KTReply.held`), the difference taken or given back
    /// now; 0 (and `held` given back) for one that is not.
    func heldBody(_ bytes: Int, from held: Int) -> Int {
        guard bytes >= ReplyMemory.largeReply else {
            replyMemory.release(held)
            return 0
        }
        if bytes > held { replyMemory.hold(bytes - held) } else { replyMemory.release(held - bytes) }
        return bytes
    }

    /// 503 for a reply of `bytes` the read ports' budget has no room for: counted, logged.
    func memoryRefusal(kind: String, bytes: Int, peer: String) -> KTReply {
        metrics.refusedForMemory(logger, peer: peer, bytes: bytes, memory: replyMemory)
        return KTReply(status: 503, headers: [("Retry-After", "1")],
                       body: Array("503 Service Unavailable (replies not yet read by their clients hold all this node keeps for them; try again)\n".utf8),
                       kind: kind)
    }

    /// The request kind `answerInPlace` counts a request as.
    static func kindName(_ kind: KTFastRequest.Kind) -> String {
        switch kind {
        case .restGet: return "rest_get"
        case .restHead: return "rest_head"
        case .rpcGet: return "get"
        }
    }

    func failure(_ error: any Error, uri: String, peer: String) -> KTReply {
        if let large = error as? KTReplyTooLarge { return memoryRefusal(kind: large.kind, bytes: large.bytes, peer: peer) }
        // Its client is gone: nothing will read the answer.
        if error is KTRequestAbandoned { return KTReply(status: 503, kind: "abandoned") }
        metrics.readFailed(logger, "KT HTTP request failed", metadata: ["peer": "\(peer)", "uri": "\(uri.prefix(200))", "error": "\(error)"])
        return KTReply(map: [Array("ERROR".utf8): Array("internal error: \(error)".utf8)], status: 500, kind: "error")
    }

    /// Counts a reply, and logs it when it refuses a bogus request or a write (`uri` is
    /// made only then).
    func account(_ r: KTReply, peer: String, uri: () -> String) {
        counters[r.kind].increment()
        if let reason = r.badReason {
            metrics.bad(logger, peer: peer, reason: reason, ["status": "\(r.status)", "uri": "\(uri().prefix(200))"])
        }
        if let what = r.refusedWrite {
            metrics.refusedWrite(logger, peer: peer, write: what)
        }
    }

    /// The response's head: KT's status line and headers.
    static func responseHead(_ r: KTReply, for head: HTTPRequestHead, keepAlive: Bool) -> HTTPResponseHead {
        HTTPResponseHead(version: head.version, status: status(r),
                         headers: HTTPHeaders(responseHeaders(r, isHead: head.method == .HEAD, keepAlive: keepAlive)))
    }

    static func status(_ r: KTReply) -> HTTPResponseStatus {
        HTTPResponseStatus(statusCode: r.status, reasonPhrase: KTHTTPStatus.reason(r.status))
    }

    /// The response's headers, in the order they are written.
    static func responseHeaders(_ r: KTReply, isHead: Bool, keepAlive: Bool) -> [(String, String)] {
        var headers = [(String, String)]()
        if !isHead { headers.append(("Content-Length", String(r.body.readableBytes))) }
        headers += r.headers
        if isHead && !headers.contains(where: { $0.0.lowercased() == "content-length" }) { headers.append(("Content-Length", "0")) }
        if !keepAlive { headers.append(("Connection", "close")) }
        return headers
    }

    /// The whole response (for the fast path), in the bytes NIO's `HTTPResponseEncoder`
    /// writes for `responseHead` and the body.
    static func write(_ r: KTReply, minorVersion: UInt8, isHead: Bool, keepAlive: Bool, into out: inout ByteBuffer) {
        let status = status(r)
        out.writeStaticString(minorVersion == 0 ? "HTTP/1.0 " : "HTTP/1.1 ")
        out.writeDecimal(UInt64(status.code))
        out.writeInteger(UInt8(ascii: " "))
        out.writeString(status.reasonPhrase)
        out.writeStaticString("\r\n")
        for (name, value) in responseHeaders(r, isHead: isHead, keepAlive: keepAlive) {
            out.writeString(name)
            out.writeStaticString(": ")
            out.writeString(value)
            out.writeStaticString("\r\n")
        }
        out.writeStaticString("\r\n")
        if !isHead { out.writeImmutableBuffer(r.body) }
    }

    /// The head of an in-place 200 reply (for the fast path), as `write` would make it.
    static func writeOKHead(minorVersion: UInt8, keepAlive: Bool, contentLength: Int, contentType: String?,
                            into out: inout ByteBuffer) {
        out.writeStaticString(minorVersion == 0 ? "HTTP/1.0 200 OK\r\nContent-Length: " : "HTTP/1.1 200 OK\r\nContent-Length: ")
        out.writeDecimal(UInt64(contentLength))
        if let contentType {
            out.writeStaticString("\r\nContent-Type: ")
            out.writeString(contentType)
        }
        if !keepAlive { out.writeStaticString("\r\nConnection: close") }
        out.writeStaticString("\r\n\r\n")
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

/// One KT HTTP connection once `KTFastHTTPHandler` has handed it over, behind NIO's HTTP
/// server pipeline (which keeps pipelined
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
    /// The listener's budget for arriving bodies was spent when this body came (503).
    private var overBudget = false
    /// Bytes of `session.pending` this connection's body holds.
    private var reserved = 0
    /// A whole request not answered yet because the socket did not take the replies before
    /// it: answered when the channel is writable again. NIO's pipeline handler gives the next
    /// request only after this one's answer, and reads nothing while it holds one, so a
    /// client that sends requests and reads no replies costs the replies past the high-water
    /// mark, not a reply to each request.
    private var waiting: HTTPRequestHead?
    /// The drain reached this connection: NIO's pipeline handler closes it after the request
    /// in flight, and a parse error's 400 is no longer written.
    private var quiescing = false

    init(session: KTHTTPSession, peer: String, slot: ReadSlot) {
        self.session = session
        self.peer = peer
        self.slot = slot
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case let .head(h):
            head = h
            releaseBody()
            tooLarge = false
            overBudget = false
            // A declared length over the limit (or over the whole budget for arriving
            // bodies, which it could never get) is answered now, not once it has all come.
            if let declared = h.headers.first(name: "content-length").flatMap(Int.init),
               declared > min(session.maxBodyBytes, session.pending.limit) {
                tooLarge = true
                head = nil
                answer(context, h)
            }
        case var .body(chunk):
            if body.readableBytes + chunk.readableBytes > session.maxBodyBytes {
                tooLarge = true
            } else if !tooLarge && !overBudget {
                if session.pending.reserve(chunk.readableBytes) {
                    reserved += chunk.readableBytes
                    body.writeBuffer(&chunk)
                } else {
                    // Answered now, not once the rest has come: the connection closes.
                    overBudget = true
                    releaseBody()
                    if let h = head {
                        head = nil
                        refuseOverBudget(context, h)
                    }
                }
            }
        case .end:
            guard let h = head else { return }
            head = nil
            guard context.channel.isWritable else {
                waiting = h
                return
            }
            answer(context, h)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, let h = waiting {
            waiting = nil
            answer(context, h)
        }
        context.fireChannelWritabilityChanged()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        releaseBody()
    }

    /// 503 for a body the listener's budget had no room for; the connection closes.
    private func refuseOverBudget(_ context: ChannelHandlerContext, _ h: HTTPRequestHead) {
        respond(context, KTReply(status: 503, body: Array("503 Service Unavailable (the request bodies arriving on this port hold all it keeps for them; try again)\n".utf8),
                                 kind: "bad", badReason: "request bodies arriving on the port together over --kt-max-pending-bytes (\(session.pending.limit) bytes)"),
                to: h, keepAlive: false)
    }

    /// Gives the body's bytes back to the listener's budget, and its memory back too.
    private func releaseBody() {
        session.pending.release(reserved)
        reserved = 0
        body.clearReleasingLargeStorage()
    }

    /// Answers the request whose head is `h` and whose body is `body`.
    private func answer(_ context: ChannelHandlerContext, _ h: HTTPRequestHead) {
        // The body is taken (and its bytes given back) before anything is written: writing
        // the answer's end can bring the next pipelined request into this handler at once,
        // with a body of its own.
        let requestBody = Array(body.readableBytesView)
        releaseBody()
        if tooLarge {
            respond(context, KTReply(status: 413, body: Array("413 Request Entity Too Large (request entity too large)\n".utf8),
                                     kind: "bad", badReason: "request body over \(min(session.maxBodyBytes, session.pending.limit)) bytes"),
                    to: h, keepAlive: false)
            return
        }
        if requestBody.isEmpty, answerInPlace(context, h) { return }
        let uri = Array(h.uri.utf8)[...], contentType = h.headers.first(name: "content-type")
        // What parsing the body builds (up to ~20 times its bytes, for short lines) is held
        // against the port's budget for bodies until the request is answered: unheld, eight
        // 30 MB get_bulks of short keys took a node from 40 MB to 680 MB on two cores.
        var held = 0
        if !requestBody.isEmpty, let name = KTHTTPSession.procedure(uri), KTProcedures.reads.contains(name) {
            let q = uri.firstIndex(of: UInt8(ascii: "?"))
            // The body's copy this request holds through its parse and work, and what the parse builds.
            let (entries, parse) = KTRPCParameters.parseBytes(query: q.map { uri[uri.index(after: $0)...] }, contentType: contentType, body: requestBody)
            let need = parse + requestBody.count
            if need > session.pending.limit {
                respond(context, KTReply(status: 413, body: Array("413 Request Entity Too Large (a request of \(entries) lines or fields: its parse would hold more than this port keeps for request bodies, --kt-max-pending-bytes; send fewer keys a request)\n".utf8),
                                         kind: "bad", badReason: "a request whose parse (\(entries) entries, about \(need) bytes) would pass --kt-max-pending-bytes (\(session.pending.limit) bytes)"),
                        to: h, keepAlive: h.isKeepAlive)
                return
            }
            guard session.pending.reserve(need) else {
                respond(context, KTReply(status: 503, headers: [("Retry-After", "1")],
                                         body: Array("503 Service Unavailable (the request bodies arriving and being parsed on this port hold all it keeps for them; try again)\n".utf8),
                                         kind: "bad", badReason: "request bodies and parses on the port together over --kt-max-pending-bytes (\(session.pending.limit) bytes)"),
                        to: h, keepAlive: h.isKeepAlive)
                return
            }
            held = need
        }
        // Work off the loops stops between pages once its connection has closed.
        let channel = context.channel
        let abandoned: @Sendable () -> Bool = { !channel.isActive }
        var (inline, work) = session.plan(h.method, uri: uri, contentType: contentType, body: requestBody, abandoned: abandoned)
        if inline {
            var r: KTReply?
            do { r = try session.store.readInline(in: slot, work) } catch is KTReplyNotInline {
                // Its reply grows large: answered off the loop.
                work = session.plan(h.method, uri: uri, contentType: contentType, body: requestBody, offloaded: true, abandoned: abandoned).work
            } catch { r = session.failure(error, uri: h.uri, peer: peer) }
            if let r {
                session.pending.release(held)
                respond(context, r, to: h, keepAlive: h.isKeepAlive)
                return
            }
        }
        do {
            let store = session.store, session = self.session, peer = self.peer, held = held, work = work
            let promise = context.eventLoop.makePromise(of: KTReply.self)
            promise.completeWithTask {
                defer { session.pending.release(held) }
                do {
                    return try await session.scans.run {
                        // Its client left while it waited for its turn: not run.
                        if abandoned() { throw KTRequestAbandoned() }
                        return try await store.read(work)
                    }
                } catch { return session.failure(error, uri: h.uri, peer: peer) }
            }
            promise.futureResult.assumeIsolated().whenSuccess { r in
                self.respond(context, r, to: h, keepAlive: h.isKeepAlive)
            }
        }
    }

    /// `KTHTTPSession.answerInPlace` for a request NIO's pipeline decoded.
    private func answerInPlace(_ context: ChannelHandlerContext, _ h: HTTPRequestHead) -> Bool {
        guard h.method == .GET || h.method == .HEAD else { return false }
        var uri = h.uri
        var body = context.channel.allocator.buffer(capacity: 0)
        var length = 0, refused = 0
        var type: String?
        var kind: KTFastRequest.Kind?
        let counter = uri.withUTF8 { u -> Counter? in
            let target = UnsafeRawBufferPointer(u)
            kind = KTFastRequest.kind(target: target, head: h.method == .HEAD)
            guard let kind else { return nil }
            return session.answerInPlace(kind, target: target, slot: slot, into: &body, refused: &refused) { _, l, t in
                length = l
                type = t
            }
        }
        if refused > 0, let kind {
            let r = session.memoryRefusal(kind: KTHTTPSession.kindName(kind), bytes: refused, peer: peer)
            session.account(r, peer: peer, uri: { h.uri })
            send(context, KTHTTPSession.responseHead(r, for: h, keepAlive: h.isKeepAlive), body: r.body, keepAlive: h.isKeepAlive)
            return true
        }
        guard let counter else { return false }
        counter.increment()
        var headers = HTTPHeaders()
        headers.add(name: "Content-Length", value: String(length))
        if let type { headers.add(name: "Content-Type", value: type) }
        let keepAlive = h.isKeepAlive
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        send(context, HTTPResponseHead(version: h.version, status: .ok, headers: headers),
             body: body.readableBytes > 0 ? body : nil, keepAlive: keepAlive)
        return true
    }

    private func respond(_ context: ChannelHandlerContext, _ r: KTReply, to h: HTTPRequestHead, keepAlive: Bool) {
        session.account(r, peer: peer, uri: { h.uri })
        let r = session.fitted(r, isHead: h.method == .HEAD, peer: peer)
        let body = h.method != .HEAD && r.body.readableBytes > 0 ? r.body : nil
        send(context, KTHTTPSession.responseHead(r, for: h, keepAlive: keepAlive), body: body, held: r.held, keepAlive: keepAlive)
    }

    /// Writes a response and flushes it once (closing the connection after it unless kept
    /// alive). `held`: what the reply took of the reply budget as it was gathered.
    private func send(_ context: ChannelHandlerContext, _ head: HTTPResponseHead, body: ByteBuffer?, held: Int = 0, keepAlive: Bool) {
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        let bytes = session.heldBody(body?.readableBytes ?? 0, from: held)
        if let body {
            if bytes > 0 {
                // Held until the socket has taken it (`ReplyMemory`).
                let memory = session.replyMemory
                context.write(wrapOutboundOut(.body(.byteBuffer(body)))).whenComplete { _ in memory.release(bytes) }
            } else {
                context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            }
        }
        if keepAlive {
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        } else {
            context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent { quiescing = true }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? HTTPParserError {
            session.counters["bad"].increment()
            session.metrics.bad(session.logger, peer: peer, reason: "unparsable HTTP: \(error)")
            // Not once the connection ended (the decoder's error for a request cut off by
            // the peer or by the drain's close) or the drain began: NIO's pipeline handler has
            // closed or is closing it, and a write then is a write after its last.
            guard context.channel.isActive && !quiescing else {
                context.close(promise: nil)
                return
            }
            // What NIO's HTTPServerProtocolErrorHandler answers (no response is under way:
            // the pipeline handler delivers a parse error after the responses before it),
            // and closed once it is written: closed at once, the replies before it that the
            // socket had not taken yet would be lost.
            let headers = HTTPHeaders([("Connection", "close"), ("Content-Length", "0")])
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .badRequest, headers: headers))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
            return
        } else {
            session.logger.debug("KT HTTP connection ended with an error", metadata: ["peer": "\(peer)", "error": "\(error)"])
        }
        context.close(promise: nil)
    }
}
