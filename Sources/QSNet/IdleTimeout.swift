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

    init(error: (any Error & Sendable)?) {
        self.error = error
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? IdleStateHandler.IdleStateEvent, e == .read {
            if let error { context.fireErrorCaught(error) }
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// Adds the idle handlers to `pipeline` (no-op for a zero or negative timeout);
    /// `error`, if given, is fired before the connection is closed.
    public static func install(readTimeout: TimeAmount, in pipeline: ChannelPipeline.SynchronousOperations,
                               error: (any Error & Sendable)? = nil) throws {
        guard readTimeout.nanoseconds > 0 else { return }
        try pipeline.addHandler(IdleStateHandler(readTimeout: readTimeout), name: stateName)
        try pipeline.addHandler(IdleTimeout(error: error), name: closerName)
    }

    /// Takes the idle handlers out of `pipeline`, if present.
    public static func remove(from pipeline: ChannelPipeline.SynchronousOperations) {
        for name in [stateName, closerName] where (try? pipeline.context(name: name)) != nil {
            pipeline.removeHandler(name: name, promise: nil)
        }
    }
}
