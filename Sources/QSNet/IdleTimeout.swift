import NIOCore

/// A client's idle timeout: closes a connection that has received nothing for a while.
/// `install` puts NIO's `IdleStateHandler` and this closer first in a pipeline; a
/// connection that legitimately goes quiet later (a KT replication stream, which only
/// sends) takes them out again with `remove`. Servers have theirs in `ConnectionGuard`
/// (`Listener`'s idle timeout), which `remove` turns off as well.
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

    /// Turns idleness checks off on a connection that only sends from now on (a stream):
    /// takes a client's idle handlers out of `pipeline`, and stops a server connection's
    /// `ConnectionGuard` checking idleness and request deadlines (its write timeout stays).
    public static func remove(from pipeline: ChannelPipeline.SynchronousOperations) {
        for name in [stateName, closerName] where (try? pipeline.context(name: name)) != nil {
            pipeline.removeHandler(name: name, promise: nil)
        }
        (try? pipeline.handler(type: ConnectionGuard.self))?.streaming()
    }
}
