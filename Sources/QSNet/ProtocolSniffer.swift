import NIOCore

/// The one protocol sniffer: waits for a connection's first byte, lets `choose` set up
/// the pipeline for the protocol that byte announces (KT: ≥ 0x80 is the binary protocol,
/// anything else HTTP), passes the byte on and steps aside. A connection speaks one
/// protocol for its lifetime. What `choose` returns fulfils `promise`; a connection that
/// closes before sending a byte fails it with `ChannelError.eof`.
public final class ProtocolSniffer<Value: Sendable>: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias Choose = (_ firstByte: UInt8, _ channel: any Channel) throws -> Value

    private let promise: EventLoopPromise<Value>?
    private let choose: Choose
    private var resolved = false

    public init(promise: EventLoopPromise<Value>? = nil, choose: @escaping Choose) {
        self.promise = promise
        self.choose = choose
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        guard !resolved, let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return }
        resolved = true
        do {
            let value = try choose(first, context.channel)
            promise?.succeed(value)
        } catch {
            promise?.fail(error)
            context.close(promise: nil)
            return
        }
        context.fireChannelRead(data)
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    /// Graceful shutdown before the first byte: nothing is in flight, so the connection closes.
    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if !resolved, event is ChannelShouldQuiesceEvent {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    public func channelInactive(context: ChannelHandlerContext) {
        if !resolved {
            resolved = true
            promise?.fail(ChannelError.eof)
        }
        context.fireChannelInactive()
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        if !resolved {
            resolved = true
            promise?.fail(ChannelError.eof)
        }
    }
}
