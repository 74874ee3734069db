import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import QSNet
import QSWire

/// Opens a streaming connection to a node (a subscription, a snapshot) as an async
/// channel of frames, with back-pressure, closed by the node-side idle timeout when
/// nothing (not even a heartbeat) arrives for `readTimeout`. `maxReadBytes` bounds one
/// read from the socket (NIO's adaptive buffer grows to it while reads fill it): a
/// snapshot's 1 MiB chunks arrive in fewer, larger reads with a bigger one.
public func openFrameChannel(host: String?, port: Int, unixPath: String?, readTimeout: TimeAmount = .seconds(5),
                             maxFrameBytes: Int = defaultMaxFrameBytes, maxReadBytes: Int = 64 << 10,
                             arrivals: ByteArrivals? = nil,
                             group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws -> NIOAsyncChannel<Frame, Frame> {
    try await openStreamChannel(host: host, port: port, unixPath: unixPath, readTimeout: readTimeout, maxReadBytes: maxReadBytes,
                                arrivals: arrivals, group: group, decoder: FrameDecoder.handler(maxFrameBytes: maxFrameBytes))
}

/// Counts the bytes a connection receives, before they are framed: a watcher can tell a
/// large frame still arriving from a peer that sends nothing (or a byte now and then).
public final class ByteArrivals: Sendable {
    private let total = NIOLockedValueBox<UInt64>(0)

    public init() {}

    /// Bytes received so far.
    public var received: UInt64 { total.withLockedValue { $0 } }

    func add(_ n: Int) { total.withLockedValue { $0 &+= UInt64(n) } }

    /// The handler that counts, first in the pipeline.
    final class Counter: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        typealias InboundOut = ByteBuffer
        let arrivals: ByteArrivals
        init(_ arrivals: ByteArrivals) { self.arrivals = arrivals }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            arrivals.add(unwrapInboundIn(data).readableBytes)
            context.fireChannelRead(data)
        }
    }
}

/// `openFrameChannel` for a snapshot stream: the frames come as `SnapshotStreamPart`s,
/// each chunk's payload as slices of the buffers the socket filled
/// (`SnapshotStreamDecoder`), so a receiver writes them to its file without a copy.
public func openSnapshotChannel(host: String?, port: Int, unixPath: String?, readTimeout: TimeAmount = .seconds(5),
                                maxFrameBytes: Int = defaultMaxFrameBytes, maxReadBytes: Int = 64 << 10,
                                group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws -> NIOAsyncChannel<SnapshotStreamPart, Frame> {
    try await openStreamChannel(host: host, port: port, unixPath: unixPath, readTimeout: readTimeout, maxReadBytes: maxReadBytes,
                                group: group, decoder: SnapshotStreamDecoder.handler(maxFrameBytes: maxFrameBytes))
}

private func openStreamChannel<Decoder: NIOSingleStepByteToMessageDecoder>(
    host: String?, port: Int, unixPath: String?, readTimeout: TimeAmount, maxReadBytes: Int, arrivals: ByteArrivals? = nil,
    group: any EventLoopGroup, decoder: @autoclosure @escaping @Sendable () -> ByteToMessageHandler<Decoder>
) async throws -> NIOAsyncChannel<Decoder.InboundOut, Frame> where Decoder.InboundOut: Sendable {
    let bootstrap = ClientBootstrap(group: group).connectTimeout(.seconds(3)).channelOption(.tcpOption(.tcp_nodelay), value: 1)
        .channelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 2048, maximum: maxReadBytes))
    let initializer: @Sendable (Channel) -> EventLoopFuture<NIOAsyncChannel<Decoder.InboundOut, Frame>> = { channel in
        channel.eventLoop.makeCompletedFuture {
            let ops = channel.pipeline.syncOperations
            if let arrivals { try ops.addHandler(ByteArrivals.Counter(arrivals)) }
            try IdleTimeout.install(readTimeout: readTimeout, in: ops)
            try ops.addHandler(decoder())
            try ops.addHandler(MessageToByteHandler(FrameEncoder()))
            return try NIOAsyncChannel<Decoder.InboundOut, Frame>(wrappingChannelSynchronously: channel,
                                                                  configuration: .init(backPressureStrategy: .init(lowWatermark: 2, highWatermark: 8)))
        }
    }
    // Connection failures in an operator's words, as a client's (not NIO's type dumps).
    do {
        if let unixPath {
            return try await bootstrap.connect(unixDomainSocketPath: unixPath, channelInitializer: initializer)
        }
        return try await bootstrap.connect(host: host ?? "127.0.0.1", port: port, channelInitializer: initializer)
    } catch {
        throw ClientError.connection(error)
    }
}
