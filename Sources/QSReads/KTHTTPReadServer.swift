import Foundation
import KTFormats
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import NIOPosix
import QSNet
import QSModel
import QSStore
import ServiceLifecycle

/// KT's HTTP RPC read procedures and RESTful reads on TCP and Unix sockets (see
/// `KTProcedures` and `KTRESTRead`), and on the same port KT's binary get_bulk
/// (`KTBinarySession`), as KT serves both. Simple reads are answered from the socket's
/// bytes (`KTFastHTTPHandler`); the first request it does not take whole hands the
/// connection to NIO's HTTP pipeline. Malformed HTTP gets 400 (`KTHTTPHandler`); every
/// bad request is counted and logged with its peer.
public struct KTHTTPReadServer: ListeningService {
    public struct Configuration: Sendable {
        public var databases: KTDatabaseMap
        public var scanLimits: ScanLimits
        /// Largest request body accepted, and largest binary-protocol request buffered (KT's
        /// own limit is far larger; QS caps memory).
        public var maxBodyBytes: Int
        /// The most bytes of bodies still arriving that all connections hold together: a
        /// body that would pass it is answered 503 and its connection closed.
        public var maxPendingBytes: Int
        public var clock: ReadClock
        /// The read ports' budget for large replies not yet read (`ReplyMemory`).
        public var replyMemory = ReplyMemory(limit: ReplyMemory.defaultLimit)

        public init(databases: KTDatabaseMap = .single, scanLimits: ScanLimits = ScanLimits(),
                    maxBodyBytes: Int = 32 << 20, maxPendingBytes: Int = 256 << 20, clock: @escaping ReadClock = { wallClockSeconds() }) {
            self.databases = databases
            self.scanLimits = scanLimits
            self.maxBodyBytes = maxBodyBytes
            self.maxPendingBytes = maxPendingBytes
            self.clock = clock
        }
    }

    public let listener: Listener
    let session: KTHTTPSession
    let binary: KTBinarySession
    let maxBodyBytes: Int

    public init(store: Store, endpoints: [Endpoint], logger: Logger,
                configuration: Configuration = Configuration(), connections: ConnectionLimits = ConnectionLimits(),
                group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        maxBodyBytes = configuration.maxBodyBytes
        listener = Listener(name: "kt-http", endpoints: endpoints, drain: .requests, limits: connections, group: group, logger: logger)
        let metrics = ReadMetrics(interface: "kt_http")
        let replyMemory = configuration.replyMemory
        let procedures = KTProcedures(databases: configuration.databases, clock: configuration.clock,
                                      limits: configuration.scanLimits, started: Date(),
                                      connections: { metrics.active.count }, replyFits: { replyMemory.admitsGathered($0, values: $1) })
        session = KTHTTPSession(store: store, procedures: procedures,
                                rest: KTRESTRead(databases: configuration.databases, clock: configuration.clock),
                                metrics: metrics, logger: logger, maxBodyBytes: configuration.maxBodyBytes,
                                pending: PendingBytes(limit: configuration.maxPendingBytes, gauge: Gauge(label: "qs_kt_http_pending_body_bytes")),
                                replyMemory: configuration.replyMemory)
        binary = KTBinarySession(store: store, databases: configuration.databases, clock: configuration.clock,
                                 maxRequestBytes: configuration.maxBodyBytes, metrics: metrics, logger: logger,
                                 replyMemory: configuration.replyMemory)
    }

    /// Bytes of request bodies still arriving that the listener's connections hold now.
    public var pendingBodyBytes: Int { session.pending.inUse }

    public func run() async throws {
        let session = self.session, binary = self.binary, maxBodyBytes = self.maxBodyBytes
        let slots = LoopReadSlots(store: session.store)
        try await listener.run { channel in
            let peer = channel.remoteAddress?.peerDescription ?? channel.localAddress?.peerDescription ?? "unknown"
            return try KTConnection.sniff(channel, maxBinaryBytes: maxBodyBytes, pending: session.pending, replies: session.replyMemory) { channel in
                try channel.pipeline.syncOperations.addHandler(KTFastHTTPHandler(session: session, peer: peer, slot: slots.slot(for: channel.eventLoop)))
            }
        } handle: { accepted in
            // A client that connects and sends nothing is closed on shutdown (idle) or
            // cancellation (the listener closes the channel), which fails the sniff. HTTP
            // is answered by the pipeline; the connection's task waits for it to close.
            if case let .binary(connection, share)? = try? await accepted.connection.get() {
                await binary.run(connection, peer: accepted.peer, drain: accepted.drain)
                share.releaseAll()
            }
        }
    }
}
