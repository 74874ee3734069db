import KTFormats
import NIOCore
import NIOPosix
import QSFeed

/// Live replication from a KT server: sends `0xB1 flags ts sid`, then reads update and
/// heartbeat frames, answering each heartbeat with one `0xB1`. Reading is pull-driven
/// (NIO async channel back-pressure): while the bridge waits on the root, nothing more is
/// read from KT, which keeps its own log.
public struct KTReplicationSource: FeedSource {
    public let host: String
    public let port: Int
    /// The sid the bridge presents to KT: updates whose origin sid equals it are not sent.
    public let sid: UInt16
    public let translator: KTTranslator
    /// With nothing (not even a heartbeat) for this long, the connection is re-made.
    public let timeout: Duration
    public let maxMessageBytes: Int
    let group: any EventLoopGroup

    public var name: String { "kt://\(host):\(port)" }

    public init(host: String, port: Int, sid: UInt16, translator: KTTranslator, timeout: Duration = .seconds(10),
                maxMessageBytes: Int = 64 << 20, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        self.host = host
        self.port = port
        self.sid = sid
        self.translator = translator
        self.timeout = timeout
        self.maxMessageBytes = maxMessageBytes
        self.group = group
    }

    struct Closed: Error, CustomStringConvertible {
        var description: String
    }

    public func run(after position: UInt64, deliver: @escaping @Sendable (FeedEvent) async throws -> Void) async throws {
        let maxMessageBytes = self.maxMessageBytes
        let readTimeout = TimeAmount.nanoseconds(Int64(timeout.seconds * 1e9))
        let channel = try await ClientBootstrap(group: group)
            .connectTimeout(.seconds(5))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connect(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    let ops = channel.pipeline.syncOperations
                    try ops.addHandler(IdleStateHandler(readTimeout: readTimeout))
                    try ops.addHandler(ReadTimeoutHandler())
                    try ops.addHandler(ByteToMessageHandler(BoundedReplicationDecoder(maxMessageBytes: maxMessageBytes)))
                    return try NIOAsyncChannel<ReplicationFrame, ByteBuffer>(
                        wrappingChannelSynchronously: channel,
                        configuration: .init(backPressureStrategy: .init(lowWatermark: 2, highWatermark: 16))
                    )
                }
            }
        let request = ReplicationRequest(flags: 0, timestamp: position, sid: sid)
        let translator = self.translator
        let name = self.name
        let sid = self.sid
        try await channel.executeThenClose { inbound, outbound in
            try await outbound.write(ByteBuffer(bytes: request.encoded()))
            do {
                for try await frame in inbound {
                    switch frame {
                    case .accepted:
                        continue
                    case .refused:
                        throw FeedError.stop("\(name) refused replication: the KT server runs without an update log (start ktserver with -ulog DIR)")
                    case let .heartbeat(ts):
                        try await outbound.write(ByteBuffer(bytes: [KTBinaryMagic.replication]))
                        try await deliver(.heartbeat(sourceTimeNs: KTTranslator.wallTimeNs(ts)))
                    case let .update(ts, message):
                        guard ts > position else { continue }
                        if message.isEmpty {
                            translator.metrics.skippedBySID.increment()
                            throw FeedError.stop("\(name) skipped updates whose origin sid equals the bridge's --sid \(sid) (at timestamp \(ts)): those changes would never reach QS. Give the bridge a --sid that differs from the KT server's own -sid and from every writer's")
                        }
                        try await deliver(.change(try translator.change(timestamp: ts, message: message)))
                    }
                }
            } catch let e as DamagedStreamError {
                translator.metrics.corruptFrames.increment()
                throw FeedError.corrupt("\(name): \(e.reason)")
            } catch let e as ReplicationStreamError {
                translator.metrics.corruptFrames.increment()
                throw FeedError.corrupt("\(name): \(e)")
            }
            throw Closed(description: "\(name) closed the replication connection")
        }
    }
}

/// Turns a read-idle event into an error that ends the replication stream.
final class ReadTimeoutHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = NIOAny

    struct Timeout: Error, CustomStringConvertible {
        var description: String { "no frame (not even a heartbeat) from the KT server within the source timeout" }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read {
            context.fireErrorCaught(Timeout())
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}
