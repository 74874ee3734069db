import NIOCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import NIOHTTP1

/// Looks at a connection's first byte, as KT does: bytes ≥ 0x80 start the binary protocol,
/// anything else is HTTP. Installs the matching handlers and steps aside.
final class ProtocolSniffer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private let core: FakeKTCore

    init(core: FakeKTCore) {
        self.core = core
    }

    func channelActive(context: ChannelHandlerContext) {
        let refuseUntil = core.faults.withLockedValue { $0.refuseUntilMillis }
        if refuseUntil > core.nowMillis() {
            core.logger.notice("fault: refusing a connection", metadata: ["peer": "\(context.channel.remoteAddress?.description ?? "?")"])
            // Reset rather than close politely, so the client sees a refused connection.
            _ = (context.channel as? SocketOptionProvider)?.setSoLinger(linger(l_onoff: 1, l_linger: 0))
            context.close(promise: nil)
            return
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return }
        let pipeline = context.pipeline.syncOperations
        do {
            if first >= 0x80 {
                try pipeline.addHandler(BinaryHandler(core: core), position: .after(self))
            } else {
                let id = core.nextConnectionID()
                try pipeline.addHandler(HTTPRequestHandler(core: core, connection: id), position: .after(self))
                try pipeline.addHandler(ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes)), position: .after(self))
            }
        } catch {
            context.close(promise: nil)
            return
        }
        context.fireChannelRead(data)
        pipeline.removeHandler(self, promise: nil)
    }
}
