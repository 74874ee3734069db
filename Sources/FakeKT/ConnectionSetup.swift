import NIOCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import NIOHTTP1
import QSNet

/// A new fakekt connection's pipeline: the refuse fault, then the shared
/// `ProtocolSniffer`, which looks at the first byte as KT does: bytes ≥ 0x80 start the
/// binary protocol, anything else is HTTP.
enum ConnectionSetup {
    static func configure(_ channel: any Channel, core: FakeKTCore) throws {
        let ops = channel.pipeline.syncOperations
        try ops.addHandler(RefuseFault(core: core))
        try ops.addHandler(ProtocolSniffer<Void> { first, channel in
            let pipeline = channel.pipeline.syncOperations
            if first >= 0x80 {
                try pipeline.addHandler(BinaryHandler(core: core))
            } else {
                try pipeline.addHandler(ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes)))
                try pipeline.addHandler(HTTPRequestHandler(core: core, connection: core.nextConnectionID()))
            }
        })
    }
}

/// Resets connections while the refuse fault is on, so clients see a refused connection.
final class RefuseFault: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private let core: FakeKTCore

    init(core: FakeKTCore) {
        self.core = core
    }

    func channelActive(context: ChannelHandlerContext) {
        let now = core.nowMillis()
        let refuse = core.faults.withLockedValue { f in
            if f.refuseUntilMillis > now { return true }
            guard f.refuseConnections > 0 else { return false }
            f.refuseConnections -= 1
            return true
        }
        if refuse {
            core.logger.notice("fault: refusing a connection", metadata: ["peer": "\(context.channel.remoteAddress?.description ?? "?")"])
            // Reset rather than close politely, so the client sees a refused connection.
            _ = (context.channel as? SocketOptionProvider)?.setSoLinger(linger(l_onoff: 1, l_linger: 0))
            context.close(promise: nil)
            return
        }
        context.fireChannelActive()
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}
