import NIOCore

/// The one idle timeout: closes a connection that has received nothing for a while.
/// `install` puts NIO's `IdleStateHandler` and this closer first in a pipeline; a
/// connection that legitimately goes quiet later (a KT replication stream, which only
/// sends) takes them out again with `remove`. Servers get it through `Listener`'s
/// `idleTimeout`; clients install it on their own channels.
public final class IdleTimeout: ChannelInboundHandler, RemovableChannelHandler, Sendable {
    public typealias InboundIn = NIOAny

    static let stateName = "qsnet.idle-state"
    static let closerName = "qsnet.idle-closer"

    /// Fired down the pipeline before the close, so the reader learns why it ended.
    let error: (any Error & Sendable)?
    /// Told before the close (a listener counts it).
    let onTimeout: (@Sendable () -> Void)?

    init(error: (any Error & Sendable)?, onTimeout: (@Sendable () -> Void)? = nil) {
        self.error = error
        self.onTimeout = onTimeout
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? IdleStateHandler.IdleStateEvent, e == .read {
            onTimeout?()
            if let error { context.fireErrorCaught(error) }
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// Adds the idle handlers to `pipeline` (no-op for a zero or negative timeout);
    /// `error`, if given, is fired before the connection is closed.
    public static func install(readTimeout: TimeAmount, in pipeline: ChannelPipeline.SynchronousOperations,
                               error: (any Error & Sendable)? = nil, onTimeout: (@Sendable () -> Void)? = nil) throws {
        guard readTimeout.nanoseconds > 0 else { return }
        try pipeline.addHandler(IdleStateHandler(readTimeout: readTimeout), name: stateName)
        try pipeline.addHandler(IdleTimeout(error: error, onTimeout: onTimeout), name: closerName)
    }

    /// Takes the idle handlers (and a server's `RequestDeadline`) out of `pipeline`, if present.
    public static func remove(from pipeline: ChannelPipeline.SynchronousOperations) {
        for name in [stateName, closerName, RequestDeadline.handlerName] where (try? pipeline.context(name: name)) != nil {
            pipeline.removeHandler(name: name, promise: nil)
        }
    }
}

/// Bounds how long one request may take to arrive, on a server's connection: from the
/// first byte received while no request is pending an answer, the server must have written
/// something back within `timeout`, or the connection is closed. The idle timeout alone
/// restarts at every byte, so a peer trickling one byte per timeout would hold its
/// connection (and its place under the caps) forever; with this, a request that is not
/// whole and answered within the timeout of its first byte costs the peer its connection.
/// Answers reset it; a connection that becomes a stream takes it out (`IdleTimeout.remove`).
/// Installed by `Listener` with the listener's idle timeout; clients do not use it (a
/// client reads answers it need not reply to).
///
/// A request costs a clock read, not a timer: the one timer, armed when a request starts
/// and none is armed, fires at that request's deadline; by then the request has been
/// answered (the timer re-arms at the deadline of the request pending now, if any) or the
/// connection is closed. A connection answering request after request arms about one timer
/// per timeout, not one per request (a scheduled task, a promise and a cancel each).
final class RequestDeadline: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    typealias OutboundIn = NIOAny

    static let handlerName = "qsnet.request-deadline"
    let timeout: TimeAmount
    let onExpiry: (ChannelHandlerContext) -> Void
    private var timer: Scheduled<Void>?
    /// When the request pending an answer began (its first byte), nil when none is.
    private var pendingSince: NIODeadline?

    /// `onExpiry` runs on the event loop just before the close (to count it and say so).
    init(timeout: TimeAmount, onExpiry: @escaping (ChannelHandlerContext) -> Void) {
        self.timeout = timeout
        self.onExpiry = onExpiry
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if pendingSince == nil {
            let now = NIODeadline.now()
            pendingSince = now
            if timer == nil { arm(context, at: now + timeout) }
        }
        context.fireChannelRead(data)
    }

    private func arm(_ context: ChannelHandlerContext, at deadline: NIODeadline) {
        let loopBound = NIOLoopBound((context, self), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(deadline: deadline) {
            let (context, handler) = loopBound.value
            handler.fired(context)
        }
    }

    private func fired(_ context: ChannelHandlerContext) {
        timer = nil
        guard let since = pendingSince else { return }
        let deadline = since + timeout
        if deadline > .now() {
            arm(context, at: deadline)  // a later request, pending for less than the timeout
            return
        }
        onExpiry(context)
        context.fireErrorCaught(RequestTimeoutError(timeout: timeout))
        context.close(promise: nil)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        pendingSince = nil
        context.write(data, promise: promise)
    }

    func channelInactive(context: ChannelHandlerContext) {
        cancel()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        cancel()
    }

    private func cancel() {
        pendingSince = nil
        timer?.cancel()
        timer = nil
    }
}

/// Why a connection whose request did not arrive whole in time was closed.
public struct RequestTimeoutError: Error, CustomStringConvertible {
    public let timeout: TimeAmount
    public var description: String {
        "no whole request within \(Double(timeout.nanoseconds) / 1e9) s of its first byte (--idle-timeout): connection closed"
    }
}
