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
        /// Threads that answer the simple reads (`KTFastRequest`) with blocking socket
        /// reads (`Listener.runThreaded`), handing a connection to the event loops at its
        /// first other request; 0 serves every connection on the event loops.
        public var threads = 0
        /// How long a connection on a thread may be quiet before it gives the thread back.
        public var parkAfter: TimeAmount = ThreadedServing.defaultParkAfter
        /// `ThreadedServing.inlineAfter`.
        public var inlineAfter: TimeAmount? = ThreadedServing.defaultInlineAfter
        /// `ThreadedServing.inlineBudget`.
        public var inlineBudget = ThreadedServing.defaultInlineBudget

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
    let threads: ThreadedServing

    public init(store: Store, endpoints: [Endpoint], logger: Logger,
                configuration: Configuration = Configuration(), connections: ConnectionLimits = ConnectionLimits(),
                group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        maxBodyBytes = configuration.maxBodyBytes
        threads = ThreadedServing(threads: configuration.threads, parkAfter: configuration.parkAfter, inlineAfter: configuration.inlineAfter,
                                  inlineBudget: configuration.inlineBudget)
        listener = Listener(name: "kt-http", endpoints: endpoints, drain: .requests, limits: connections, group: group, logger: logger)
        let metrics = ReadMetrics(interface: "kt_http")
        var procedures = KTProcedures(databases: configuration.databases, clock: configuration.clock,
                                      limits: configuration.scanLimits, started: Date(),
                                      connections: { metrics.active.count })
        procedures.replyMemory = configuration.replyMemory
        session = KTHTTPSession(store: store, procedures: procedures,
                                rest: KTRESTRead(databases: configuration.databases, clock: configuration.clock),
                                metrics: metrics, logger: logger, maxBodyBytes: configuration.maxBodyBytes,
                                pending: PendingBytes(limit: configuration.maxPendingBytes, gauge: Gauge(label: "qs_kt_http_pending_body_bytes")),
                                replyMemory: configuration.replyMemory)
        binary = KTBinarySession(store: store, databases: configuration.databases, clock: configuration.clock,
                                 maxRequestBytes: configuration.maxBodyBytes, metrics: metrics, logger: logger,
                                 replyMemory: configuration.replyMemory, scans: session.scans)
    }

    /// Bytes of request bodies still arriving that the listener's connections hold now.
    public var pendingBodyBytes: Int { session.pending.inUse }

    public func run() async throws {
        let session = self.session, binary = self.binary, maxBodyBytes = self.maxBodyBytes
        let slots = LoopReadSlots(store: session.store)
        // A connection's pipeline on the event loops: sniffed by its first byte (KT's
        // binary protocol or HTTP), unless it already spoke HTTP on a reader thread.
        let configure: @Sendable (any Channel, _ spokeHTTP: Bool) throws -> EventLoopFuture<KTConnection> = { channel, spokeHTTP in
            let peer = channel.remoteAddress?.peerDescription ?? channel.localAddress?.peerDescription ?? "unknown"
            let http: (any Channel) throws -> Void = { channel in
                try channel.pipeline.syncOperations.addHandler(KTFastHTTPHandler(session: session, peer: peer, slot: slots.slot(for: channel.eventLoop)))
            }
            guard !spokeHTTP else {
                RequestDrain.installed(in: channel.pipeline.syncOperations)?.handOverToPipeline()
                // Before the channel is active: a client that sent its end after the request
                // the thread handed over is answered it (its end may be seen before that
                // request is, and would otherwise close the channel first).
                try channel.syncOptions?.setOption(ChannelOptions.allowRemoteHalfClosure, value: true)
                try http(channel)
                return channel.eventLoop.makeSucceededFuture(.http)
            }
            return try KTConnection.sniff(channel, maxBinaryBytes: maxBodyBytes, pending: session.pending, http: http)
        }
        // A client that connects and sends nothing is closed on shutdown (idle) or
        // cancellation (the listener closes the channel), which fails the sniff. HTTP is
        // answered by the pipeline; the connection's task waits for it to close.
        let handle: @Sendable (AcceptedConnection<EventLoopFuture<KTConnection>>) async -> Void = { accepted in
            if case let .binary(connection, share, ends)? = try? await accepted.connection.get() {
                await binary.run(connection, share: share, ends: ends, peer: accepted.peer, drain: accepted.drain)
                share.releaseAll()
            }
        }
        if threads.threads > 0 {
            try await listener.runThreaded(KTThreads(session: session), serving: threads, handedOver: configure, handle: handle)
        } else {
            try await listener.run(configure: { try configure($0, false) }, handle: handle)
        }
    }
}

/// KT's port on a threaded listener (`--kt-http-threads`): each reader thread answers the
/// simple reads (`KTFastRequest`: `GET`/`HEAD /KEY`, `GET /rpc/get?…`) with its own read
/// transaction, the replies the event loops' fast path writes (`KTHTTPSession.answer`); at
/// the first request it does not take (KT's binary protocol, a body, another procedure)
/// the connection goes to the event loops, whose pipeline answers the rest
/// (`Answering.handOver`). A head not yet whole waits for its bytes on the thread, under
/// the listener's request deadline.
struct KTThreads: ThreadedProtocol {
    let session: KTHTTPSession

    struct Connection {
        let peer: String
        /// A request was answered here: the event loops take the connection as HTTP,
        /// without sniffing its next byte (KT sniffs only a connection's first). Counted
        /// as a KT HTTP connection from then on, as the event loops count one once its
        /// first byte says HTTP (a binary one is not).
        var spokeHTTP = false
    }

    func makeWorker() -> ReadSlot { session.store.makeReadSlot() }

    func open(peer: String) -> Connection { Connection(peer: peer) }

    func received(_ input: inout ByteBuffer, connection: inout Connection, into out: inout ByteBuffer, held: inout Int,
                  worker: ReadSlot, flush: (inout ByteBuffer, inout Int) -> Bool) -> Answering {
        while input.readableBytes > 0 {
            switch input.withUnsafeReadableBytes({ KTFastRequest.parse($0) }) {
            case .incomplete:
                return .open
            case .handOver:
                return .handOver
            case let .request(request):
                if !connection.spokeHTTP {
                    connection.spokeHTTP = true
                    session.metrics.opened()
                }
                input.withUnsafeReadableBytes { session.answer(request, in: $0, slot: worker, peer: connection.peer, into: &out, held: &held) }
                input.moveReaderIndex(forwardBy: request.length)
                if !request.keepAlive { return .close }
                if out.readableBytes >= MemcachedSession.flushBytes && !flush(&out, &held) { return .paused }
            }
        }
        return .open
    }

    func closed(_ connection: Connection) {
        if connection.spokeHTTP { session.metrics.closed() }
    }

    /// The pipeline on the event loops counts the connection (again) if it is HTTP.
    func handOff(_ connection: Connection) -> Bool {
        closed(connection)
        return connection.spokeHTTP
    }

    var replyMemory: ReplyMemory? { session.replyMemory }
}
