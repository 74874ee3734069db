import NIOCore
import NIOHTTP1

/// The request loop of an HTTP connection served as an async sequence (qsrest): requests
/// in order, each body gathered up to `maxBodyBytes`. Each request is marked in flight on
/// the connection's drain by `HTTPRequestMarks` in the pipeline, not here (graceful shutdown
/// and the idle timeout wait for its answer). A body over the limit is answered by
/// `tooLarge` and the connection closed; otherwise `answer` replies (`true`: keep the
/// connection open).
///
/// `refuse` sees each request's head before its body: when it answers (and returns true),
/// the body is read and dropped, not gathered, and the connection closes after it. So is a
/// body whose `Content-Length` is over the limit, answered by `tooLarge` at once: nothing
/// is held for a request that will be refused (qsrest: no credential, no buffered body).
///
/// `pending`: the budget a request's body is held against, asked of each request after
/// `refuse` has seen its head (the listener's connections together, or a producer's share
/// of that: `PendingBytes.parent`), from the body's arrival until `answer` returns: a body
/// that would pass it is answered by `overBudget` (told which budget refused) at once, the
/// rest of it dropped, and the connection closes. Without it, N connections each sending
/// an allowed body held N × `maxBodyBytes` (qsrest, 60 producers' connections and 30 MB
/// bodies: 1.75 GB).
public enum HTTPRequests {
    public static func serve(
        _ inbound: NIOAsyncChannelInboundStream<HTTPServerRequestPart>, maxBodyBytes: Int,
        pending: (HTTPRequestHead) -> PendingBytes? = { _ in nil },
        refuse: (HTTPRequestHead) async throws -> Bool = { _ in false },
        tooLarge: (HTTPRequestHead) async throws -> Void,
        overBudget: (HTTPRequestHead, PendingBytes) async throws -> Void = { _, _ in },
        answer: (HTTPRequestHead, [UInt8]) async throws -> Bool
    ) async throws {
        var head: HTTPRequestHead?
        var body = ByteBuffer()
        var over = false
        /// This request was answered from its head; its body is dropped.
        var answered = false
        /// The budget of the request being read, and the bytes of `body` held against it.
        var budget: PendingBytes?
        var reserved = 0
        defer { budget?.release(reserved) }
        for try await part in inbound {
            switch part {
            case let .head(h):
                head = h
                body.clearReleasingLargeStorage()
                over = false
                answered = false
                budget = nil
                if try await refuse(h) {
                    answered = true
                } else if let declared = h.headers.first(name: "content-length").flatMap(Int.init), declared > maxBodyBytes {
                    try await tooLarge(h)
                    answered = true
                } else {
                    budget = pending(h)
                }
            case var .body(chunk):
                if answered { continue }
                if body.readableBytes + chunk.readableBytes > maxBodyBytes {
                    over = true
                } else if !over {
                    if let b = budget {
                        if let refusedBy = b.take(chunk.readableBytes) {
                            // Answered now, not once the rest has come: the connection closes.
                            b.release(reserved)
                            reserved = 0
                            body.clearReleasingLargeStorage()
                            answered = true
                            if let h = head { try await overBudget(h, refusedBy) }
                            continue
                        }
                        reserved += chunk.readableBytes
                    }
                    body.writeBuffer(&chunk)
                }
            case .end:
                guard let h = head else { continue }
                head = nil
                if answered { return }
                if over {
                    try await tooLarge(h)
                    return
                }
                let bytes = Array(body.readableBytesView)
                body.clearReleasingLargeStorage()
                let keepAlive = try await answer(h, bytes)
                // Parsed and queued (the queue holds its writes against its own budget).
                budget?.release(reserved)
                reserved = 0
                if !keepAlive { return }
            }
        }
    }
}

/// Marks each HTTP request on its connection's `RequestDrain` as the pipeline sees it, on
/// the event loop that also runs the connection's timeouts: in flight from its head,
/// answering once whole (its `.end` decoded), done once its answer's `.end` is written to
/// the socket. Placed after the HTTP server pipeline's handlers, before the connection's
/// async channel.
///
/// Marked by the task reading the requests instead (as before), a whole request waited
/// unmarked until that task came to it, and an answer was unmarked once handed to the
/// channel's writer, before the event loop wrote it: an idle timeout falling in either gap
/// (a loaded machine, a timeout shorter than a commit's wait) closed a connection whose
/// answer was on its way (qsrest: curl got no answer to a write its log says was answered).
///
/// Graceful shutdown: the requests begun before it are the ones owed an answer. A request
/// whose head comes after it is not passed on, nor is anything behind it, so the task never
/// reads it and nothing of it is applied; its peer sees the connection close without its
/// answer and sends it again. The last answer owed gets `Connection: close`, the answers
/// before it are written as they were, and the drain closes the connection once the last
/// is written. (qsrest closed after the first answer written in the stop: requests
/// pipelined behind it, already applied, went unanswered, and a producer sending an
/// unanswered `increment` again applied it twice.)
public final class HTTPRequestMarks: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = HTTPServerRequestPart
    public typealias InboundOut = HTTPServerRequestPart
    public typealias OutboundIn = HTTPServerResponsePart
    public typealias OutboundOut = HTTPServerResponsePart

    private let drain: RequestDrain
    /// Requests passed on whose answers' heads are not written yet.
    private var owed = 0
    /// Shutdown had begun when a request's head came: it and everything after it are dropped.
    private var closedToRequests = false

    public init(drain: RequestDrain) {
        self.drain = drain
    }

    /// Adds the marks for a connection a `.requests` listener accepted (nothing without a drain).
    public static func add(to pipeline: ChannelPipeline.SynchronousOperations) throws {
        if let drain = RequestDrain.installed(in: pipeline) { try pipeline.addHandler(HTTPRequestMarks(drain: drain)) }
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        // The drain learns of shutdown on this event loop: a head decoded after it is new.
        if case .head = part, !closedToRequests, drain.isQuiescing { closedToRequests = true }
        guard !closedToRequests else { return }
        switch part {
        case .head:
            owed += 1
            drain.begin()
        case .end: drain.answering()
        case .body: break
        }
        context.fireChannelRead(data)
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Bytes that do not parse among those dropped are owed no answer (the task would
        // answer them 400, after the last answer owed).
        if closedToRequests, error is HTTPParserError || error is ByteToMessageDecoderError { return }
        context.fireErrorCaught(error)
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case var .head(head):
            owed = max(0, owed - 1)
            // The last answer of a connection shutting down says so: a keep-alive producer
            // opens a new connection (to another instance) for its next request instead of
            // sending it into one that closes.
            if owed == 0, head.isKeepAlive, drain.isQuiescing {
                head.headers.replaceOrAdd(name: "Connection", value: "close")
                context.write(wrapOutboundOut(.head(head)), promise: promise)
            } else {
                context.write(data, promise: promise)
            }
        case .body:
            context.write(data, promise: promise)
        case .end:
            // Done once written (or failed): a close when draining comes after the bytes.
            let written = promise ?? context.eventLoop.makePromise()
            let drain = self.drain
            written.futureResult.whenComplete { _ in drain.end() }
            context.write(data, promise: written)
        }
    }
}
