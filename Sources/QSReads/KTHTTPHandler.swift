import KTFormats
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import QSNet
import QSStore
import Synchronization

/// One KT HTTP connection once `KTFastHTTPHandler` has handed it over, behind NIO's HTTP
/// server pipeline (which keeps pipelined
/// requests in order: the next request arrives once this one's response has ended, and
/// drains the connection on shutdown). Bodies are capped at `maxBodyBytes` (413 and close
/// beyond); a request that does not parse is answered 400 and the connection closed.
///
/// A client that sends its end after its requests (half-closes: `printf … | nc -N`, an
/// HTTP/1.0 script) is answered them, as ktserver answers, then the connection closes (the
/// channel allows remote half-closure). A client that closes looks the same on the wire, so
/// work off the loops for a connection whose input ended stops (`KTRequestAbandoned`) only
/// while other scans wait for a slot or the node is stopping: uncontended, it is answered.
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
    /// A request is being answered (from its whole arrival until its response is written).
    private var answering = false
    /// Whether the client sent its end (the request being answered is then the last), and
    /// whether the drain reached the connection (told by
    /// `KTFastHTTPHandler`: NIO's pipeline handler keeps the event; it closes the connection
    /// after the request in flight, and a parse error's 400 is no longer written), for the
    /// work off the loops (`abandoned`).
    private let ends: KTConnectionEnds

    init(session: KTHTTPSession, peer: String, slot: ReadSlot, ends: KTConnectionEnds) {
        self.session = session
        self.peer = peer
        self.slot = slot
        self.ends = ends
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
        answering = true
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
        // Work off the loops stops between pages once its connection has closed, or its
        // input ended while other scans wait or the node stops.
        let channel = context.channel, ends = self.ends, scans = session.scans
        let abandoned: @Sendable () -> Bool = { !channel.isActive || ends.yields(to: scans) }
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
        var length = 0, refused = 0, held = 0
        var type: String?
        var kind: KTFastRequest.Kind?
        let counter = uri.withUTF8 { u -> Counter? in
            let target = UnsafeRawBufferPointer(u)
            kind = KTFastRequest.kind(target: target, head: h.method == .HEAD)
            guard let kind else { return nil }
            return session.answerInPlace(kind, target: target, slot: slot, into: &body, held: &held, refused: &refused) { _, l, t in
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
        guard let counter else {
            session.replyMemory.release(held)
            return false
        }
        counter.increment()
        var headers = HTTPHeaders()
        headers.add(name: "Content-Length", value: String(length))
        if let type { headers.add(name: "Content-Type", value: type) }
        let keepAlive = h.isKeepAlive && !ends.inputEnded.load(ordering: .relaxed)
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        send(context, HTTPResponseHead(version: .http1_1, status: .ok, headers: headers),
             body: body.readableBytes > 0 ? body : nil, held: held, keepAlive: keepAlive)
        return true
    }

    private func respond(_ context: ChannelHandlerContext, _ r: KTReply, to h: HTTPRequestHead, keepAlive: Bool) {
        let keepAlive = keepAlive && !ends.inputEnded.load(ordering: .relaxed)
        session.account(r, peer: peer, uri: { h.uri })
        let r = session.fitted(r, isHead: h.method == .HEAD, peer: peer)
        let body = h.method != .HEAD && r.body.readableBytes > 0 ? r.body : nil
        send(context, KTHTTPSession.responseHead(r, for: h, keepAlive: keepAlive), body: body, held: r.held, keepAlive: keepAlive)
    }

    /// Writes a response and flushes it once (closing the connection after it unless kept
    /// alive). `held`: what the reply took of the reply budget as it was gathered.
    private func send(_ context: ChannelHandlerContext, _ head: HTTPResponseHead, body: ByteBuffer?, held: Int = 0, keepAlive: Bool) {
        answering = false
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
            LingeringClose.close(context, after: context.writeAndFlush(wrapOutboundOut(.end(nil))))
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            // (NIO's pipeline handler passes it on after the requests that came before it.)
            ends.inputEnded.store(true, ordering: .relaxed)
            if !answering && waiting == nil { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? HTTPParserError {
            session.counters["bad"].increment()
            session.metrics.bad(session.logger, peer: peer, reason: "unparsable HTTP: \(error)")
            // Not once the connection ended (the decoder's error for a request cut off by
            // the peer or by the drain's close) or the drain began: NIO's pipeline handler has
            // closed or is closing it, and a write then is a write after its last.
            guard context.channel.isActive && !ends.stopping.load(ordering: .relaxed) else {
                context.close(promise: nil)
                return
            }
            // What NIO's HTTPServerProtocolErrorHandler answers (no response is under way:
            // the pipeline handler delivers a parse error after the responses before it),
            // and closed once it is written: closed at once, the replies before it that the
            // socket had not taken yet would be lost.
            let headers = HTTPHeaders([("Connection", "close"), ("Content-Length", "0")])
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .badRequest, headers: headers))), promise: nil)
            LingeringClose.close(context, after: context.writeAndFlush(wrapOutboundOut(.end(nil))))
            return
        } else {
            session.logger.debug("KT HTTP connection ended with an error", metadata: ["peer": "\(peer)", "error": "\(error)"])
        }
        context.close(promise: nil)
    }
}

/// What work off the event loops asks of its KT HTTP connection (`KTHTTPHandler`), from
/// any thread.
final class KTConnectionEnds: Sendable {
    /// The client sent its end (half-closed; a client that closed looks the same).
    let inputEnded = Atomic<Bool>(false)
    /// The drain reached the connection (NIO's pipeline handler keeps the event to itself:
    /// `KTFastHTTPHandler`, before it, sets this).
    let stopping = Atomic<Bool>(false)

    /// Whether work for a connection whose input ended gives way: other scans wait for a
    /// slot (`scans`), or the node is stopping.
    func yields(to scans: ScanGate) -> Bool {
        inputEnded.load(ordering: .relaxed) && (stopping.load(ordering: .relaxed) || scans.isContended)
    }
}
