import NIOCore

/// A client's idle timeout: closes a connection on which nothing arrived for `readTimeout`
/// while the reader wanted more. The clock runs only from a read the pipeline asks for
/// (an outbound `read`) until data comes: a stream whose consumer is busy (an async
/// channel holding its reads back while a bridge waits on its root) is not idle, however
/// long the wait, and finds its connection still open when it reads again.
///
/// `install` puts it first in a pipeline; a connection that legitimately goes quiet later
/// (a KT replication stream, which only sends) takes it out again with `remove`. Servers
/// have theirs in `ConnectionGuard` (`Listener`'s idle timeout), which `remove` turns off
/// as well.
public final class IdleTimeout: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = NIOAny
    public typealias OutboundIn = NIOAny

    static let name = "qsnet.idle-timeout"

    let readTimeout: TimeAmount
    /// Fired down the pipeline before the close, so the reader learns why it ended.
    let error: (any Error & Sendable)?
    /// Told before the close (a listener counts it).
    let onTimeout: (@Sendable () -> Void)?
    /// Set while a read is wanted and nothing has come since.
    private var deadline: Scheduled<Void>?
    /// Which arming a scheduled expiry belongs to: one cancelled too late to stop it (picked
    /// up in the same loop tick as a re-arm) finds the generation moved on and does nothing.
    private var generation = 0

    init(readTimeout: TimeAmount, error: (any Error & Sendable)?, onTimeout: (@Sendable () -> Void)? = nil) {
        self.readTimeout = readTimeout
        self.error = error
        self.onTimeout = onTimeout
    }

    public func read(context: ChannelHandlerContext) {
        if deadline == nil {
            generation += 1
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop), armed = generation
            deadline = context.eventLoop.scheduleTask(in: readTimeout) {
                let (handler, context) = bound.value
                handler.expired(context: context, generation: armed)
            }
        }
        context.read()
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        disarm()
        context.fireChannelRead(data)
    }

    public func channelInactive(context: ChannelHandlerContext) {
        disarm()
        context.fireChannelInactive()
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        disarm()
    }

    private func disarm() {
        deadline?.cancel()
        deadline = nil
        generation += 1
    }

    private func expired(context: ChannelHandlerContext, generation armed: Int) {
        guard deadline != nil, armed == generation else { return }
        deadline = nil
        onTimeout?()
        if let error { context.fireErrorCaught(error) }
        context.close(promise: nil)
    }

    /// Adds the idle timeout to `pipeline` (no-op for a zero or negative timeout);
    /// `error`, if given, is fired before the connection is closed.
    public static func install(readTimeout: TimeAmount, in pipeline: ChannelPipeline.SynchronousOperations,
                               error: (any Error & Sendable)? = nil, onTimeout: (@Sendable () -> Void)? = nil) throws {
        guard readTimeout.nanoseconds > 0 else { return }
        try pipeline.addHandler(IdleTimeout(readTimeout: readTimeout, error: error, onTimeout: onTimeout), name: name)
    }

    /// Turns idleness checks off on a connection that only sends from now on (a stream):
    /// takes a client's idle timeout out of `pipeline`, and stops a server connection's
    /// `ConnectionGuard` checking idleness and request deadlines (its write timeout stays).
    public static func remove(from pipeline: ChannelPipeline.SynchronousOperations) {
        if (try? pipeline.context(name: name)) != nil {
            pipeline.removeHandler(name: name, promise: nil)
        }
        (try? pipeline.handler(type: ConnectionGuard.self))?.streaming()
    }
}
