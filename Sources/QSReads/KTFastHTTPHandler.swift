import KTFormats
import Metrics
import NIOCore
import NIOHTTP1
import QSStore

/// A KT HTTP connection's first handler (after the connection guard): answers the simple
/// reads (`KTFastRequest`: `GET`/`HEAD /KEY`, `GET /rpc/get?…`, no body) straight from the
/// socket's bytes, the way `MemcachedHandler` answers memcached — the request parsed in
/// place, read in the event loop's transaction, every reply of a socket read written into
/// one buffer and flushed once (or whenever it holds `MemcachedSession.flushBytes`) —
/// without NIO's HTTP decoder, request head, pipeline handler or response encoder. The
/// bytes of the replies are those the NIO path writes (`KTHTTPSession.write`,
/// `writeOKHead`; tested side by side), and the counters, the bad-request log and the
/// expiry and database rules are the same code's.
///
/// At the first request it does not take whole (`KTFastRequest.Parse.handOver`, or a head
/// split across socket reads), it writes what it answered, puts NIO's HTTP server
/// pipeline and `KTHTTPHandler` behind itself and passes the rest of the bytes on, as they
/// came: the connection is NIO's from then on, and this handler only passes events
/// through. Replies stay in request order (its own are written before NIO sees a byte).
///
/// Before the hand-over it drains itself (the listener's drain is handed to the
/// pipeline): it answers every request in the socket read that brought it, so on
/// graceful shutdown it reads no more and closes once what it answered is sent; after,
/// NIO's pipeline handler drains. While the socket does not take the replies it answers no
/// more requests and reads no more, as `MemcachedHandler` does (`held`).
final class KTFastHTTPHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let session: KTHTTPSession
    private let peer: String
    private let slot: ReadSlot
    private var out = ByteBuffer()
    /// What `out`'s replies hold of the reply budget, handed on when it is written.
    private var outHeld = 0
    private var handedOver = false
    /// The handed-over connection's state for its work off the loops: the drain is told
    /// here (NIO's pipeline handler, after this one, does not pass its event on).
    private var ends: KTConnectionEnds?
    private var closing = false
    /// A read was asked for while the socket did not take the replies.
    private var readHeld = false
    /// Requests not answered because the socket did not take the replies before them
    /// (and bytes read after them): answered when the channel is writable again.
    private var held: ByteBuffer?
    /// The client sent its end while requests were `held`: it closes once they are answered.
    private var inputEnded = false

    init(session: KTHTTPSession, peer: String, slot: ReadSlot) {
        self.session = session
        self.peer = peer
        self.slot = slot
    }

    func handlerAdded(context: ChannelHandlerContext) {
        session.metrics.opened()
        out = context.channel.allocator.buffer(capacity: 4096)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        session.metrics.closed()
        // Replies answered and never written (the connection ended first): their hold goes.
        session.replyMemory.release(outHeld)
        outHeld = 0
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if handedOver {
            context.fireChannelRead(data)
            return
        }
        guard !closing else { return }
        var input = unwrapInboundIn(data)
        if var waiting = held {
            waiting.writeBuffer(&input)
            held = waiting
            return
        }
        answerRequests(&input, context: context)
    }

    /// Answers the requests of `input` in order, stopping (`held`) when a write leaves the
    /// channel not writable; at the first request it does not take whole it hands over.
    private func answerRequests(_ input: inout ByteBuffer, context: ChannelHandlerContext) {
        while !closing && input.readableBytes > 0 {
            let parsed = input.withUnsafeReadableBytes { KTFastRequest.parse($0) }
            guard case let .request(request) = parsed else {
                handOver(context, rest: input)
                return
            }
            input.withUnsafeReadableBytes { session.answer(request, in: $0, slot: slot, peer: peer, into: &out, held: &outHeld) }
            input.moveReaderIndex(forwardBy: request.length)
            if !request.keepAlive {
                closing = true
                writeOut(context, thenClose: true)
            } else if out.readableBytes >= MemcachedSession.flushBytes {
                writeOut(context)
                if !context.channel.isWritable && input.readableBytes > 0 {
                    held = input
                    return
                }
            }
        }
    }

    /// From here on NIO's HTTP pipeline reads the connection: what was answered is
    /// written first, then `rest` goes to NIO's decoder.
    private func handOver(_ context: ChannelHandlerContext, rest: ByteBuffer) {
        handedOver = true
        session.handovers.increment()
        writeOut(context)
        do {
            let ops = context.pipeline.syncOperations
            // As before the fast path: no error handler and no outbound header check in
            // every request's path (`KTHTTPHandler` answers a parse error with 400 itself
            // and writes only headers it made).
            try ops.configureHTTPServerPipeline(withErrorHandling: false, withOutboundHeaderValidation: false)
            let ends = KTConnectionEnds()
            self.ends = ends
            try ops.addHandler(KTHTTPHandler(session: session, peer: peer, slot: slot, ends: ends))
            // A client's end (half-closed after its requests) is `KTHTTPHandler`'s to act on:
            // the requests before it are answered first, as ktserver answers them. (Set
            // before this on a connection a reader thread handed over.)
            try context.channel.syncOptions?.setOption(ChannelOptions.allowRemoteHalfClosure, value: true)
        } catch {
            session.logger.error("KT HTTP: could not set up the HTTP pipeline", metadata: ["peer": "\(peer)", "error": "\(error)"])
            context.close(promise: nil)
            return
        }
        context.fireChannelRead(wrapInboundOut(rest))
        if readHeld {
            readHeld = false
            context.read()
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if !handedOver { writeOut(context) }
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if handedOver || (context.channel.isWritable && held == nil) {
            context.read()
        } else {
            readHeld = true
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if !handedOver && !closing && context.channel.isWritable, var input = held {
            held = nil
            answerRequests(&input, context: context)
            if !handedOver {
                if inputEnded && held == nil { closing = true }
                writeOut(context, thenClose: closing)
            }
        }
        if readHeld && context.channel.isWritable && held == nil && !handedOver {
            readHeld = false
            context.read()
        }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if handedOver {
            context.fireErrorCaught(error)
            return
        }
        session.logger.debug("KT HTTP connection ended with an error", metadata: ["peer": "\(peer)", "error": "\(error)"])
        context.close(promise: nil)
    }

    /// Graceful shutdown: before the hand-over no request is half read, so the connection
    /// closes once what was answered is sent; after it, NIO's pipeline handler drains.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if !handedOver, let end = event as? ChannelEvent, end == .inputClosed {
            // The client's end (the channel allows half-closure: `KTHTTPReadServer`), before
            // anything went to NIO's pipeline: what it sent is answered, then it closes.
            guard !closing else { return }
            if held == nil {
                closing = true
                writeOut(context, thenClose: true)
            } else {
                inputEnded = true
            }
            return
        }
        guard !handedOver, event is ChannelShouldQuiesceEvent else {
            if event is ChannelShouldQuiesceEvent { ends?.stopping.store(true, ordering: .relaxed) }
            context.fireUserInboundEventTriggered(event)
            return
        }
        guard !closing else { return }
        closing = true
        held = nil
        writeOut(context, thenClose: true)
    }

    /// Writes what was answered (and closes after it, `thenClose`), as `MemcachedHandler`.
    private func writeOut(_ context: ChannelHandlerContext, thenClose: Bool = false) {
        _ = context.writeReplies(&out, held: &outHeld, thenClose: thenClose, memory: session.replyMemory)
    }
}

extension KTHTTPSession {
    /// One request the fast path takes (`KTFastRequest`), its reply into `out`: in place
    /// when `answerInPlace` takes it, else the general path's reply (`plan`, read inline:
    /// both kinds are bounded lookups). The event loops' `KTFastHTTPHandler` and the
    /// reader threads' `KTThreads` answer with it.
    /// `held`: what `out`'s replies hold of the reply budget (a large reply is held as it is
    /// built), handed on with `out` to whoever writes it.
    func answer(_ request: KTFastRequest, in bytes: UnsafeRawBufferPointer, slot: ReadSlot, peer: String,
                into out: inout ByteBuffer, held: inout Int) {
        let target = UnsafeRawBufferPointer(rebasing: bytes[request.target])
        let keepAlive = request.keepAlive
        var refused = 0
        if let counter = answerInPlace(request.kind, target: target, slot: slot, into: &out, held: &held, refused: &refused, head: { out, length, type in
            KTHTTPSession.writeOKHead(keepAlive: keepAlive, contentLength: length, contentType: type, into: &out)
        }) {
            counter.increment()
            return
        }
        if refused > 0 {
            // Refused unbuilt: the budget's 503, not the general path's whole reply.
            let r = memoryRefusal(kind: KTHTTPSession.kindName(request.kind), bytes: refused, peer: peer)
            account(r, peer: peer, uri: { String(decoding: target, as: UTF8.self) })
            KTHTTPSession.write(r, isHead: false, keepAlive: keepAlive, into: &out)
            return
        }
        let isHead = request.kind == .restHead
        let uri = Array(target)[...]
        let (_, work) = plan(isHead ? .HEAD : .GET, uri: uri, contentType: nil, body: [])
        let r: KTReply
        do {
            r = try store.readInline(in: slot, work)
        } catch {
            r = failure(error, uri: String(decoding: uri, as: UTF8.self), peer: peer)
        }
        account(r, peer: peer, uri: { String(decoding: uri, as: UTF8.self) })
        let reply = fitted(r, isHead: isHead, peer: peer)
        KTHTTPSession.write(reply, isHead: isHead, keepAlive: keepAlive, into: &out)
        // Its body now in `out`, the reply's hold is `out`'s (none for a HEAD: no body).
        held += reply.held
    }
}
