import Logging
import NIOCore
import NIOExtras
import NIOPosix
import QSNet
import QSWire
import ServiceLifecycle

/// The QS write protocol server on one or more endpoints (TCP and Unix sockets). On
/// graceful shutdown it stops accepting, lets every connection finish its in-flight
/// request, then returns.
public struct WriteServer: Service {
    let core: NodeCore
    let endpoints: [Endpoint]
    let maxFrameBytes: Int
    let group: any EventLoopGroup
    let logger: Logger

    public init(core: NodeCore, endpoints: [Endpoint], maxFrameBytes: Int,
                group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger) {
        self.core = core
        self.endpoints = endpoints
        self.maxFrameBytes = maxFrameBytes
        self.group = group
        self.logger = logger
    }

    public func run() async throws {
        let quiesce = ServerQuiescingHelper(group: group)
        let core = self.core, logger = self.logger, maxFrameBytes = self.maxFrameBytes
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(quiesce.makeServerChannelHandler(channel: channel))
                }
            }
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelOption(.autoRead, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let ops = channel.pipeline.syncOperations
                    try ops.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameBytes: maxFrameBytes)))
                    try ops.addHandler(MessageToByteHandler(FrameEncoder()))
                    try ops.addHandler(WriteProtocolHandler(core: core, logger: logger))
                }
            }
        var channels = [Channel]()
        for endpoint in endpoints {
            channels.append(try await bind(bootstrap, to: endpoint))
            logger.info("write protocol listening", metadata: ["address": "\(endpoint)"])
        }
        // Wait for shutdown (graceful or cancellation), then quiesce.
        try? await gracefulShutdown()
        logger.info("write server stopping: no new connections, finishing in-flight requests")
        let done = group.next().makePromise(of: Void.self)
        quiesce.initiateShutdown(promise: done)
        try await done.futureResult.get()
        logger.info("write server stopped")
    }
}
