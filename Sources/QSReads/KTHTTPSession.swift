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
                       held: inout Int, refused: inout Int,
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
        let found = withUnsafeTemporaryAllocation(byteCount: encoded.count, alignment: 1) { space -> Bool in
            let key = UnsafeRawBufferPointer(rebasing: space[..<KTColumnEncoding.urlDecode(encoded, into: space)])
            return (try? store.readInline(in: slot) { txn in
                try txn.withRecord(bytes: key) { record -> Bool in
                    guard let record, record.expiry == nil else { return false }
                    // A large value is held against the reply budget before it is built
                    // (`held`: `out`'s hold, handed on to its writer); one the budget has no
                    // room for now is refused unbuilt.
                    // `/rpc/get`'s body is the value's column encoded (up to three times
                    // its size): its size as written is held.
                    let body = kind == .rpcGet && record.value.count >= ReplyMemory.largeReply / 3
                        ? Self.valueReplyCount(record.value) : record.value.count
                    if kind != .restHead && body >= ReplyMemory.largeReply {
                        guard replyMemory.tryHold(body) else {
                            refused = body
                            return false
                        }
                        held += body
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
    /// The body `writeValueReply` writes for `value`, in bytes.
    static func valueReplyCount(_ value: UnsafeRawBufferPointer) -> Int {
        var estimate = KTTSV.EncodingEstimate()
        valueName.withUnsafeBytes { estimate.account($0) }
        estimate.account(value)
        guard let encoding = estimate.encoding else { return valueName.count + value.count + 2 }
        return valueName.withUnsafeBytes { encoding.encodedCount($0) } + encoding.encodedCount(value) + 2
    }

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
    /// `r`, its large body held against the read ports' budget (`KTReply.held`, the check
    /// and the hold in one step: whoever writes it takes the hold on), or 503 when the
    /// budget has no room for it now (`ReplyMemory`): counted and logged, the client told
    /// to try again.
    func fitted(_ r: KTReply, isHead: Bool, peer: String) -> KTReply {
        let bytes = r.body.readableBytes
        if isHead || r.held > 0 || bytes < ReplyMemory.largeReply { return r }
        guard replyMemory.tryHold(bytes) else { return memoryRefusal(kind: r.kind, bytes: bytes, peer: peer) }
        var held = r
        held.held = bytes
        return held
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

    /// The response's head: KT's status line and headers. The status line says `HTTP/1.1`
    /// whatever the request's version, as ktserver writes it (kthttp.h's `send_result`), and
    /// as RFC 9110 §6.2 asks (a server sends its own version); an HTTP/1.0 request is still
    /// answered with `Connection: close` unless it asked for keep-alive.
    static func responseHead(_ r: KTReply, for head: HTTPRequestHead, keepAlive: Bool) -> HTTPResponseHead {
        HTTPResponseHead(version: .http1_1, status: status(r),
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
    static func write(_ r: KTReply, isHead: Bool, keepAlive: Bool, into out: inout ByteBuffer) {
        let status = status(r)
        out.writeStaticString("HTTP/1.1 ")
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
    static func writeOKHead(keepAlive: Bool, contentLength: Int, contentType: String?, into out: inout ByteBuffer) {
        out.writeStaticString("HTTP/1.1 200 OK\r\nContent-Length: ")
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
