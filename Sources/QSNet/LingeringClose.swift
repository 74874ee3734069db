import NIOCore

/// How a server closes a connection whose peer may still be sending (a request body refused
/// part-way, a frame over the limit, the rest of a line too long, requests pipelined after a
/// `Connection: close`): closed at once with bytes unread, or with more arriving after, the
/// kernel answers with a reset, and a client that writes its whole request before it reads
/// (Python's `http.client`, most blocking clients) sees "connection reset by peer" instead of
/// the answer that said why; a reply still in the send queue is lost with it.
///
/// So the answer is written, then the output is shut (a FIN after the last answer: the
/// client reads it and its end), and what the peer still sends is read and dropped until it
/// closes too, at most `idle` without a byte and `most` in all: "lingering close", as Apache
/// and nginx close. Nothing read then reaches the protocol's handlers (this handler goes
/// first in the pipeline and keeps the reads to itself). A graceful stop ends the linger at
/// once (`ChannelShouldQuiesceEvent`), as does a reset or an error.
public final class LingeringClose: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = NIOAny

    /// The longest the peer may go without sending while the connection lingers (Apache's
    /// two seconds).
    public static let idle: TimeAmount = .seconds(2)
    /// The longest a connection lingers however much the peer sends (nginx's
    /// `lingering_time`).
    public static let most: TimeAmount = .seconds(30)

    private let idle: TimeAmount
    private let most: TimeAmount
    private var context: ChannelHandlerContext?
    /// The output is shut: the answers are all written, the linger's clock runs.
    private var shut = false
    /// The peer's end came (or a graceful stop began): close once the output is shut.
    private var ending = false
    private var lastRead = NIODeadline.now()
    private var ends = NIODeadline.distantFuture
    private var timer: Scheduled<Void>?

    init(idle: TimeAmount, most: TimeAmount) {
        self.idle = idle
        self.most = most
    }

    /// Closes `context`'s channel lingering: once `written` (the last answer's write, which
    /// completes after every write before it) is flushed — until then the write timeout is
    /// the only clock — its output is shut, and it reads and drops what comes until the
    /// peer's end, `idle` without a byte, or `most`; then it closes. Shut before the answers
    /// are written, a client that half-closed would have it all closed, its answers lost.
    /// Where the channel cannot take the handler or shut its output, it closes at once. On
    /// the event loop.
    public static func close(_ context: ChannelHandlerContext, after written: EventLoopFuture<Void>,
                             idle: TimeAmount = idle, most: TimeAmount = most) {
        close(context.channel, after: written, idle: idle, most: most)
    }

    /// As `close(_:after:)`, for a channel whose handlers do not hand out their writes'
    /// futures (an async channel's writer): nil `written` is every write queued so far (an
    /// empty write from the first handler, which no other handler sees, completes after them).
    public static func close(_ channel: any Channel, after written: EventLoopFuture<Void>?,
                             idle: TimeAmount = idle, most: TimeAmount = most) {
        channel.eventLoop.assertInEventLoop()
        let ops = channel.pipeline.syncOperations
        guard (try? ops.handler(type: LingeringClose.self)) == nil else { return }
        let handler = LingeringClose(idle: idle, most: most)
        let marked: EventLoopFuture<Void>
        do {
            try ops.addHandler(handler, position: .first)
            marked = try written ?? ops.context(handler: handler).writeAndFlush(NIOAny(ByteBuffer()))
        } catch {
            channel.close(promise: nil)
            return
        }
        // A graceful stop that reached the connection before this handler did (the drain
        // saw it, with the last request still in flight): no lingering after the answers.
        if RequestDrain.installed(in: ops)?.isQuiescing == true { handler.end() }
        marked.assumeIsolated().whenComplete { result in
            guard case .success = result, channel.isActive else {
                channel.close(promise: nil)
                return
            }
            let shut = channel.eventLoop.makePromise(of: Void.self)
            shut.futureResult.assumeIsolated().whenComplete { result in
                switch result {
                case .success: handler.outputShut()
                // The output could not be shut (a channel that cannot) or the input had
                // closed meanwhile (NIO then closes it all).
                case .failure: channel.close(promise: nil)
                }
            }
            channel.close(mode: .output, promise: shut)
        }
    }

    /// Closes an async channel lingering from its task (`close(channel, after: nil)`: after
    /// the writes queued so far) and returns once it has closed. `lingering` runs on the
    /// event loop once the handler is in, when nothing more reaches the protocol's
    /// handlers: what the connection holds for requests it will no longer read can be
    /// given back then, not 2–30 s later.
    public static func closeAndWait(_ channel: any Channel, lingering: (@Sendable () -> Void)? = nil) async {
        channel.eventLoop.execute {
            close(channel, after: nil)
            lingering?()
        }
        try? await channel.closeFuture.get()
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // The linger keeps its own clocks: the guard, which no longer sees what is read,
        // would take a peer still sending for an idle one (and count it so). Its write
        // timeout stays, for the last answer. (memcached's handler keeps its watch itself
        // and turns it off as it closes.)
        IdleTimeout.remove(from: context.pipeline.syncOperations)
        // Reads from here go straight to the socket: handlers further on that hold reads
        // back (a response under way, back-pressure) no longer decide.
        context.read()
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        disarm()
        self.context = nil
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        lastRead = .now()
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        context.read()
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            end()
        } else if event is ChannelShouldQuiesceEvent {
            // A graceful stop: the answers already written still go; no lingering after.
            end()
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // The connection broke (a reset): nothing more to write or wait for.
        context.close(promise: nil)
    }

    public func channelInactive(context: ChannelHandlerContext) {
        disarm()
        context.fireChannelInactive()
    }

    private func outputShut() {
        shut = true
        if ending {
            context?.close(promise: nil)
            return
        }
        lastRead = .now()
        ends = lastRead + most
        arm(at: lastRead + idle)
    }

    private func end() {
        ending = true
        if shut { context?.close(promise: nil) }
    }

    private func arm(at deadline: NIODeadline) {
        guard let context else { return }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(deadline: min(deadline, ends)) { bound.value.check() }
    }

    private func disarm() {
        timer?.cancel()
        timer = nil
    }

    private func check() {
        timer = nil
        guard let context else { return }
        let now = NIODeadline.now()
        if now >= ends || now >= lastRead + idle {
            context.close(promise: nil)
        } else {
            arm(at: lastRead + idle)
        }
    }
}
