import Logging
import Metrics
import NIOCore
import NIOPosix
import QSNet
import QSWire
import ServiceLifecycle

/// The QS write protocol server on one or more endpoints (TCP and Unix sockets); the
/// replication and snapshot streams are served on the same connections. On graceful
/// shutdown it stops accepting, lets every connection finish its in-flight request (the
/// handler acts on NIO's quiesce event), closes streams and idle connections, then returns.
public struct WriteServer: ListeningService {
    public let listener: Listener
    let core: NodeCore
    let maxFrameBytes: Int
    /// The bytes of frames still arriving that connections without a token hold together
    /// (`ArrivingFrames`, `--max-arriving-frame-bytes`).
    public let arriving: PendingBytes
    let logger: Logger

    /// `--max-arriving-frame-bytes`' default.
    public static let defaultMaxArrivingBytes = 64 << 20

    public init(core: NodeCore, endpoints: [Endpoint], maxFrameBytes: Int, maxArrivingBytes: Int = defaultMaxArrivingBytes,
                limits: ConnectionLimits = ConnectionLimits(),
                group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger) {
        self.core = core
        self.maxFrameBytes = maxFrameBytes
        self.logger = logger
        arriving = PendingBytes(limit: maxArrivingBytes, gauge: Gauge(label: "qs_write_arriving_frame_bytes"))
        listener = Listener(name: "write", endpoints: endpoints, drain: .pipeline, limits: limits, group: group, logger: logger)
    }

    public func run() async throws {
        let core = self.core, logger = self.logger, maxFrameBytes = self.maxFrameBytes, arriving = self.arriving
        try await listener.run { channel in
            try Self.configure(channel, core: core, maxFrameBytes: maxFrameBytes, arriving: arriving, logger: logger)
        }
    }

    /// One connection's pipeline: frames bounded at `maxFrameBytes` (a longer declared
    /// length is refused with `frame-too-large` as soon as it arrives, and NIO bounds the
    /// buffer behind that), frames over 1 MiB only for writes carrying the write token
    /// (checked when it arrives, before the rest is buffered), the bytes of frames still
    /// arriving held to `arriving` until the connection presents a token, then the handler.
    public static func configure(_ channel: any Channel, core: NodeCore, maxFrameBytes: Int, arriving: PendingBytes? = nil, logger: Logger) throws {
        let ops = channel.pipeline.syncOperations
        let large = FrameDecoder.LargeFrames(writable: core.writable, admits: core.writeGate.admits, tokenLength: core.writeGate.tokenLength)
        let share = arriving.map { budget in ArrivingFrames(limit: budget.limit, take: { budget.reserve($0) }, give: { budget.release($0) }) }
        if let share {
            channel.closeFuture.assumeIsolated().whenComplete { _ in share.releaseAll() }
        }
        try ops.addHandler(FrameDecoder.handler(maxFrameBytes: maxFrameBytes, largeFrames: large, arriving: share))
        try ops.addHandler(FrameWriter())
        try ops.addHandler(WriteProtocolHandler(core: core, logger: logger, arriving: share))
    }
}
