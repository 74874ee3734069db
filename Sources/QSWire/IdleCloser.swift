import NIOCore

/// Closes a connection that has been silent past the read timeout of the
/// `IdleStateHandler` before it (replicas, log subscribers).
public final class IdleCloser: ChannelInboundHandler, Sendable {
    public typealias InboundIn = NIOAny

    public init() {}

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? IdleStateHandler.IdleStateEvent, e == .read {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}
