import NIOCore

/// Closes a connection that has sent nothing for `-tout` seconds, as ktserver's session
/// timeout does. Replication connections drop it: they legitimately stay silent.
final class IdleCloser: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    static let name = "fakekt.idle-closer"
    static let stateName = "fakekt.idle-state"

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? IdleStateHandler.IdleStateEvent, e == .read {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// Puts the idle handlers first in a new connection's pipeline (no-op for timeout ≤ 0).
    static func install(timeout: Double, in pipeline: ChannelPipeline.SynchronousOperations) throws {
        guard timeout > 0, timeout.isFinite else { return }
        let ms = Int64(min(timeout, 86_400) * 1000)
        try pipeline.addHandler(IdleStateHandler(readTimeout: .milliseconds(ms)), name: stateName)
        try pipeline.addHandler(IdleCloser(), name: name)
    }

    /// Removes the idle handlers from `pipeline`, if present.
    static func remove(from pipeline: ChannelPipeline.SynchronousOperations) {
        for name in [stateName, Self.name] {
            if (try? pipeline.context(name: name)) != nil {
                pipeline.removeHandler(name: name, promise: nil)
            }
        }
    }
}
