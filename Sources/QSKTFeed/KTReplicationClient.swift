import KTFormats
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import QSBytes
import QSFeed
import QSNet

/// A read-only KT replication client: connects, sends `0xB1 flags ts sid`, answers every
/// heartbeat with one `0xB1`, and hands each frame to its consumer. It never writes
/// anything else to the server. Reading is pull-driven (NIO async channel back-pressure):
/// while the consumer is busy nothing more is read, and KT keeps its own log.
///
/// Heartbeats are answered as they are read (`HeartbeatAnswers`), not once the consumer
/// has taken them: KT sends nothing after a heartbeat until it is answered, so answers
/// held behind a busy consumer would make KT fall silent while the client still reads,
/// and the silence timeout would end a healthy connection (a bridge waiting a while on
/// its root). The silence timeout counts only while a read is wanted (`IdleTimeout`):
/// once the consumer's buffer is full nothing is read and nothing is counted. KT's own
/// session timeout may still close a connection whose last heartbeat stays unread that
/// long; the source then reconnects from its position.
///
/// The bridge (`KTReplicationSource`) and the recorder (`KTRecorder`) are both consumers
/// of this one client.
public struct KTReplicationClient: Sendable {
    public let host: String
    public let port: Int
    /// The sid presented to KT: updates whose origin sid equals it are not sent.
    public let sid: UInt16
    /// With nothing (not even a heartbeat) for this long, the connection is given up.
    public let timeout: Duration
    public let maxMessageBytes: Int
    let group: any EventLoopGroup

    public var name: String { "kt://\(host):\(port)" }

    public init(host: String, port: Int, sid: UInt16, timeout: Duration = .seconds(10), maxMessageBytes: Int = 64 << 20,
                group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        self.host = host
        self.port = port
        self.sid = sid
        self.timeout = timeout
        self.maxMessageBytes = maxMessageBytes
        self.group = group
    }

    /// Why a replication connection ended.
    public enum Failure: Error, CustomStringConvertible, Sendable {
        /// The server answered `0xBF`: it runs without an update log.
        case refused(server: String)
        /// An empty update frame: KT skipped updates whose origin sid equals ours.
        case sidClash(server: String, sid: UInt16, timestamp: UInt64)
        /// KT read an update it did not send, as its heartbeats or its update log tell
        /// (`WithheldUpdateWatch`): `evidence` says which.
        case withheld(server: String, sid: UInt16, timestamp: UInt64, evidence: String)
        /// A frame that cannot be decoded (bad magic, oversized message).
        case damaged(server: String, reason: String)
        /// The server closed the connection.
        case closed(server: String)
        /// An update message over `maxMessageBytes`: the same frame comes back after every
        /// reconnect, so retrying cannot cure it.
        case tooLarge(server: String, reason: String)

        public var description: String {
            switch self {
            case let .refused(s): return "\(s) refused replication: the KT server runs without an update log (start ktserver with -ulog DIR)"
            case let .sidClash(s, sid, ts):
                return "\(s) skipped updates whose origin sid equals the --sid \(sid) presented to it (at timestamp \(ts)): those changes would be missing. Give a --sid that differs from the KT server's own -sid and from every writer's (if it already does, KT withheld an update-log entry it could not parse: check its log)"
            case let .withheld(s, sid, ts, evidence):
                return "\(s) read an update it did not send (timestamp \(ts)), as \(evidence) show: its origin sid equals the --sid \(sid) presented to it, and such changes would be missing. Give a --sid that differs from the KT server's own -sid and from every writer's (if it already does, KT could not read or parse that update-log entry: check its log)"
            case let .damaged(s, reason): return "\(s): \(reason)"
            case let .closed(s): return "\(s) closed the replication connection"
            case let .tooLarge(s, reason): return "\(s): \(reason); raise --max-message-bytes to read it"
            }
        }
    }

    /// Streams the updates after `timestamp`: `frame` gets the acceptance, then every update
    /// and heartbeat frame in order (heartbeats already answered). An empty update frame (a sid clash) ends the
    /// stream with `Failure.sidClash` before it reaches `frame`. Returns only when `frame`
    /// throws or the task is cancelled; the server closing is `Failure.closed`.
    public func stream(after timestamp: UInt64, _ frame: (ReplicationFrame) async throws -> Void) async throws {
        try await streamRuns(after: timestamp) { run in
            for received in run { try await frame(received) }
        }
    }

    /// `stream`, with the frames handed over in runs: the whole frames of one read from
    /// the socket (at most `FrameRuns.maxFrames`), in order, so a consumer pays one hop
    /// per run rather than per frame. The heartbeats in a run were answered when they were
    /// read (an answer only tells KT the connection is alive); a run never holds a
    /// frame after a sid clash. While `run` is busy nothing more is read once the
    /// channel's buffer is full.
    public func streamRuns(after timestamp: UInt64, link: ReplicationLink? = nil,
                           _ run: ([ReplicationFrame]) async throws -> Void) async throws {
        let maxMessageBytes = self.maxMessageBytes
        let readTimeout = TimeAmount.nanoseconds(Int64(timeout.seconds * 1e9))
        let channel = try await ClientBootstrap(group: group)
            .connectTimeout(.seconds(5))
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .connect(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    link?.connected(to: channel.remoteAddress)
                    let ops = channel.pipeline.syncOperations
                    try IdleTimeout.install(readTimeout: readTimeout, in: ops, error: ReadTimeout())
                    try ops.addHandler(ByteToMessageHandler(ReplicationFrameDecoder(maxMessageBytes: maxMessageBytes),
                                                             maximumBufferSize: maxMessageBytes + 13))
                    try ops.addHandler(HeartbeatAnswers())
                    try ops.addHandler(FrameRuns())
                    return try NIOAsyncChannel<[ReplicationFrame], ByteBuffer>(
                        wrappingChannelSynchronously: channel,
                        configuration: .init(backPressureStrategy: .init(lowWatermark: 2, highWatermark: 16))
                    )
                }
            }
        let request = ReplicationRequest(flags: 0, timestamp: timestamp, sid: sid)
        let name = self.name
        let sid = self.sid
        try await channel.executeThenClose { inbound, outbound in
            try await outbound.write(ByteBuffer(bytes: request.encoded()))
            do {
                for try await received in inbound {
                    var clash: Failure?
                    var whole = received.endIndex
                    for (i, frame) in received.enumerated() {
                        switch frame {
                        case .accepted:
                            break
                        case .refused:
                            clash = Failure.refused(server: name)
                        case .heartbeat:
                            break
                        case let .update(ts, message):
                            if message.isEmpty { clash = Failure.sidClash(server: name, sid: sid, timestamp: ts) }
                        }
                        if clash != nil {
                            whole = i
                            break
                        }
                    }
                    if whole > 0 { try await run(whole == received.endIndex ? received : Array(received[..<whole])) }
                    if let clash { throw clash }
                }
            } catch let e as DecodeError {
                // The server closing inside a frame is a closed connection, not damage.
                if e.kind == .truncated { throw Failure.closed(server: name) }
                if e.kind == .tooLarge { throw Failure.tooLarge(server: name, reason: "\(e)") }
                throw Failure.damaged(server: name, reason: "\(e)")
            } catch is ByteToMessageDecoderError.PayloadTooLargeError {
                throw Failure.damaged(server: name, reason: "more than \(maxMessageBytes + 13) bytes without a whole frame")
            }
            throw Failure.closed(server: name)
        }
    }
}

/// What a replication connection's pipeline tells its consumer beside the frames: the
/// server's address it connected to, written on the event loop before any frame is passed on.
public final class ReplicationLink: Sendable {
    private let state = NIOLockedValueBox<SocketAddress?>(nil)

    public init() {}

    public var address: SocketAddress? { state.withLockedValue { $0 } }

    func connected(to address: SocketAddress?) { state.withLockedValue { $0 = address } }
}

/// Answers each heartbeat as it is read with one `0xB1`, the answers of one read of the
/// socket in one write at the read's end.
final class HeartbeatAnswers: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ReplicationFrame
    typealias InboundOut = ReplicationFrame
    typealias OutboundOut = ByteBuffer

    private var owed = 0

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .heartbeat = unwrapInboundIn(data) { owed += 1 }
        context.fireChannelRead(data)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if owed > 0 {
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(repeating: KTBinaryMagic.replication, count: owed)), promise: nil)
            owed = 0
        }
        context.fireChannelReadComplete()
    }
}

/// Gathers the frames decoded from one read of the socket and passes them on as one array
/// at the read's end (or every `maxFrames`): the async channel then carries, and the
/// consumer awaits, one element per read rather than per frame.
final class FrameRuns: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ReplicationFrame
    typealias InboundOut = [ReplicationFrame]

    /// The most frames passed on at once.
    static let maxFrames = 1024
    private var run: [ReplicationFrame] = []

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        run.append(unwrapInboundIn(data))
        if run.count >= Self.maxFrames { pass(context) }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        pass(context)
        context.fireChannelReadComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Frames decoded before the error come first.
        pass(context)
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        pass(context)
        context.fireChannelInactive()
    }

    private func pass(_ context: ChannelHandlerContext) {
        guard !run.isEmpty else { return }
        let frames = run
        run = []
        context.fireChannelRead(wrapInboundOut(frames))
    }
}

/// What ends a replication stream on which nothing (not even a heartbeat) arrived in time.
struct ReadTimeout: Error, CustomStringConvertible {
    var description: String { "no frame (not even a heartbeat) from the KT server within the source timeout" }
}
