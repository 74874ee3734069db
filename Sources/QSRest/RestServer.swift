import Foundation
import KTFormats
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import QSModel
import QSNet
import ServiceLifecycle

/// The producers' side of qsrest: KT's HTTP RPC write procedures and RESTful PUT/DELETE
/// (`KTWrites`), each request authenticated (HTTP Basic `producer:token` or
/// `Authorization: Bearer token`) against the ACL, its keys checked against the
/// producer's prefixes, its size against the producer's quota, and answered once the
/// batch holding it is committed at the root (`WriteQueue`).
///
/// KT's binary protocol (a connection whose first byte is ≥ 0x80, e.g. ukt's default
/// `set_bulk`, 0xB8) carries no credential, so it is refused: the connection gets KT's
/// binary error reply (0xBF) and is closed, counted in `qs_rest_binary_refused_total` and
/// logged (once per peer every 10 s) with what to do instead: HTTP RPC with a credential.
public struct RestServer: ListeningService {
    public struct Configuration: Sendable {
        public var maxBodyBytes: Int
        /// The longest a request over its soft quota is delayed; a request that would wait
        /// longer is refused with 429 and Retry-After.
        public var maxQuotaDelay: Duration

        /// The bytes of request bodies arriving on all connections together
        /// (`--max-arriving-bytes`): a body that would pass it is answered 503 at once.
        public var maxArrivingBytes: Int
        /// Each producer's share of it (`--max-arriving-bytes-per-producer`).
        public var maxArrivingBytesPerProducer: Int

        /// `maxArrivingBytesPerProducer` nil: `defaultShare`.
        public init(maxBodyBytes: Int = 32 << 20, maxQuotaDelay: Duration = .seconds(2), maxArrivingBytes: Int = 256 << 20,
                    maxArrivingBytesPerProducer: Int? = nil) {
            self.maxBodyBytes = maxBodyBytes
            self.maxQuotaDelay = maxQuotaDelay
            self.maxArrivingBytes = maxArrivingBytes
            self.maxArrivingBytesPerProducer = maxArrivingBytesPerProducer
                ?? Self.defaultShare(maxArrivingBytes: maxArrivingBytes, maxBodyBytes: maxBodyBytes)
        }

        /// A producer's share by default: all of what all connections may hold but one body
        /// of `--max-body`, so another producer's body always fits, and at least one body.
        public static func defaultShare(maxArrivingBytes: Int, maxBodyBytes: Int) -> Int {
            max(maxBodyBytes, maxArrivingBytes - maxBodyBytes)
        }
    }

    public let listener: Listener
    let handler: RequestHandler

    /// - Parameter limits: the producer port's idle timeout and connection caps
    ///   (`--idle-timeout`, `--max-connections`, `--max-connections-per-peer`).
    public init(endpoints: [Endpoint], access: Access, queue: WriteQueue, writes: KTWrites, metrics: RestMetrics,
                logger: Logger, configuration: Configuration = Configuration(), limits: ConnectionLimits = ConnectionLimits(),
                group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        listener = Listener(name: "rest", endpoints: endpoints, drain: .requests, limits: limits, group: group, logger: logger)
        handler = RequestHandler(access: access, queue: queue, writes: writes, metrics: metrics, logger: logger,
                                 configuration: configuration,
                                 arriving: ArrivingBytes(limit: configuration.maxArrivingBytes, perProducer: configuration.maxArrivingBytesPerProducer,
                                                         gauge: metrics.arrivingBytes))
    }

    /// What a connection's first byte said it speaks.
    enum Speaks: Sendable {
        case http(RequestHandler.Connection)
        /// KT's binary protocol, refused; the byte is its magic (0xB8 set_bulk, …).
        case binary(UInt8)
    }

    public func run() async throws {
        let handler = self.handler
        try await listener.run { channel in
            let promise = channel.eventLoop.makePromise(of: Speaks.self)
            try channel.pipeline.syncOperations.addHandler(ProtocolSniffer(promise: promise) { first, channel -> Speaks in
                let ops = channel.pipeline.syncOperations
                if first >= 0x80 {
                    try ops.addHandler(BinaryRefusal())
                    return .binary(first)
                }
                // No pipelining assistance: the connection reads ahead of its answers itself
                // (`serve`) and writes them in request order.
                // No error handling by NIO: an unparsable request is answered 400 by `serve`,
                // after the answers owed to the requests before it.
                try ops.configureHTTPServerPipeline(withPipeliningAssistance: false, withErrorHandling: false)
                try HTTPRequestMarks.add(to: ops)
                // A producer that sends its end right after its requests (`printf … | nc -N`,
                // an HTTP/1.0 script) is answered them, as KT answers: its end finishes the
                // requests read (`serve`), their answers are written, then it closes. (Its end
                // closed the channel: writes applied, never acknowledged.)
                try channel.syncOptions?.setOption(ChannelOptions.allowRemoteHalfClosure, value: true)
                return .http(try NIOAsyncChannel(wrappingChannelSynchronously: channel))
            })
            return promise.futureResult
        } handle: { accepted in
            // A connection that sends nothing fails the sniff when it is closed (idle,
            // shutdown): there is nothing to answer.
            switch try? await accepted.connection.get() {
            case let .http(connection)?:
                await handler.serve(connection, peer: accepted.peer)
            case let .binary(magic)?:
                handler.refuseBinary(magic: magic, peer: accepted.peer)
            case nil:
                break
            }
        }
    }
}

/// Answers KT's binary protocol with its error reply (0xBF) and closes the connection.
final class BinaryRefusal: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private var answered = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !answered else { return }
        answered = true
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: [KTBinaryMagic.error]))).whenComplete { _ in
            channel.close(promise: nil)
        }
    }
}

/// The ACL in force and each producer's quota, replaced as a whole on reload.
public final class Access: Sendable {
    struct State {
        var acl: ACL
        var quotas: [String: Quota]
    }

    private let state: NIOLockedValueBox<State>
    let maxQuotaDelay: Duration
    let metrics: RestMetrics

    public init(_ acl: ACL, maxQuotaDelay: Duration, metrics: RestMetrics) {
        self.maxQuotaDelay = maxQuotaDelay
        self.metrics = metrics
        state = NIOLockedValueBox(State(acl: acl, quotas: Self.quotas(acl, maxDelay: maxQuotaDelay)))
        for p in acl.producers { _ = metrics.producer(p.name) }
    }

    static func quotas(_ acl: ACL, maxDelay: Duration) -> [String: Quota] {
        Dictionary(uniqueKeysWithValues: acl.producers.map {
            ($0.name, Quota(writesPerSecond: $0.writesPerSecond, bytesPerSecond: $0.bytesPerSecond, maxDelay: maxDelay))
        })
    }

    public var acl: ACL { state.withLockedValue { $0.acl } }

    /// Puts `acl` in force; producers whose quotas did not change keep their buckets.
    public func replace(_ acl: ACL) {
        let fresh = Self.quotas(acl, maxDelay: maxQuotaDelay)
        state.withLockedValue { s in
            var quotas = fresh
            for p in acl.producers {
                if let old = s.acl.producers.first(where: { $0.name == p.name }),
                   old.writesPerSecond == p.writesPerSecond, old.bytesPerSecond == p.bytesPerSecond {
                    quotas[p.name] = s.quotas[p.name]
                }
            }
            s = State(acl: acl, quotas: quotas)
        }
        for p in acl.producers { _ = metrics.producer(p.name) }
    }

    /// Reads `path` and puts it in force; on an error the ACL in force stays and the error
    /// is returned (for the log).
    /// Reads the ACL a server can serve with: one naming no producer (an empty or
    /// comment-only file) is refused, at start and on reload alike, since every request
    /// would be refused 401 while `/readyz` said ready.
    public static func load(path: String) throws -> ACL {
        let acl = try ACL.load(path: path)
        guard !acl.producers.isEmpty else {
            throw ACL.LoadError(description: "\(path) names no producer: add a [producers.NAME] table for each producer (docs/operations.md)")
        }
        return acl
    }

    public func reload(path: String) -> Result<ACL, any Error> {
        do {
            let acl = try Self.load(path: path)
            replace(acl)
            metrics.aclReloads.increment()
            return .success(acl)
        } catch {
            metrics.aclReloadFailures.increment()
            return .failure(error)
        }
    }

    func authenticate(user: String?, token: [UInt8]) -> ACL.Producer? {
        state.withLockedValue { $0.acl }.authenticate(user: user, token: token)
    }

    /// Why `producer` can never have `writes` writes in one request (nil: it may).
    func neverFits(producer: String, writes: Int) -> String? {
        state.withLockedValue { $0.quotas[producer]?.neverFits(writes: writes, bytes: 0) }
    }

    func take(producer: String, writes: Int, bytes: Int) -> Quota.Decision {
        state.withLockedValue { s in
            guard var q = s.quotas[producer] else { return .pass }
            let d = q.take(writes: writes, bytes: bytes)
            s.quotas[producer] = q
            return d
        }
    }
}

/// Serves one connection's requests in order.
struct RequestHandler: Sendable {
    let access: Access
    let queue: WriteQueue
    let writes: KTWrites
    let metrics: RestMetrics
    let logger: Logger
    let configuration: RestServer.Configuration
    /// Warnings about what a peer sent, a line per peer and kind every 10 s at most, the
    /// next one counting the rest (every refusal is counted in the metrics): no or a
    /// refused credential, a bad request, a key outside the keyspace, the binary protocol.
    let authLog = RateLimitedLog(), badLog = RateLimitedLog(), keyspaceLog = RateLimitedLog(), binaryLog = RateLimitedLog()
    /// Lines a request can repeat at any rate, each at most every 10 s for its cause (the
    /// next one counting the rest; the metrics count every one): a producer over its quota
    /// (per producer), writes the root did not commit (one budget: the cause is the root's).
    let quotaLog = RateLimitedLog(), commitLog = RateLimitedLog()
    /// Bodies refused for `arriving`: a line every 10 s at most (the cause is every producer's).
    let arrivingLog = RateLimitedLog()
    /// The bytes of request bodies arriving on all connections together, against
    /// `configuration.maxArrivingBytes`: each connection's cap (`--max-body`) bounds one body,
    /// this bounds them all (60 connections sending 30 MB bodies held 1.75 GB); each
    /// producer's against its share of it, so one producer's slow uploads cannot hold it all.
    let arriving: ArrivingBytes

    typealias Connection = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>

    /// A connection's requests are read, checked and queued in the order they came while
    /// the answers of earlier ones wait for their batch, so requests a producer pipelines
    /// join one batch (applied in the order sent); one task writes the answers in that
    /// order. At most `maxAhead` requests (and `maxAheadBytes` of their writes, one always)
    /// wait for their answers on a connection: past that, reading waits.
    static let maxAhead = 64
    /// Bodies of this many bytes or more are parsed on NIO's thread pool (`prepare`).
    static let offloadedBodyBytes = 256 << 10
    static let maxAheadBytes = 32 << 20

    /// An answer on its way, written in request order.
    struct Pending: Sendable {
        let reply: Task<RestReply, Never>
        let head: HTTPRequestHead
        let keepAlive: Bool
        let bytes: Int
    }

    /// The writer's word that the connection closes after what it wrote.
    struct Closing: Error {}

    func serve(_ connection: Connection, peer: String) async {
        do {
            try await connection.executeThenClose { inbound, outbound in
                let (answers, queued) = AsyncStream.makeStream(of: Pending.self)
                let (written, freed) = AsyncStream.makeStream(of: Int.self)
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        defer { freed.finish() }
                        for await p in answers {
                            let reply = await p.reply.value
                            // Shutting down, the pipeline's marks (`HTTPRequestMarks`) pass on no
                            // request begun after it, say `Connection: close` on the last answer
                            // owed and close the connection once it is written.
                            try await write(reply, head: p.head, keepAlive: p.keepAlive, outbound: outbound)
                            freed.yield(p.bytes)
                            if !p.keepAlive {
                                // Closed lingering (`LingeringClose`): a producer still sending
                                // (the rest of an unparsable request) reads the answer and then
                                // its end, not a reset; the reads stop reaching `inbound`.
                                await LingeringClose.closeAndWait(connection.channel)
                                throw Closing()
                            }
                        }
                    }
                    var waiting = 0, waitingBytes = 0
                    var taken = written.makeAsyncIterator()
                    func enqueue(_ head: HTTPRequestHead, keepAlive: Bool, bytes: Int = 0,
                                 _ make: @escaping @Sendable () async -> RestReply) async {
                        while waiting > 0 && (waiting >= Self.maxAhead || waitingBytes + bytes > Self.maxAheadBytes) {
                            guard let n = await taken.next() else { break }
                            waiting -= 1
                            waitingBytes -= n
                        }
                        waiting += 1
                        waitingBytes += bytes
                        queued.yield(Pending(reply: Task { await make() }, head: head, keepAlive: keepAlive, bytes: bytes))
                    }
                    do {
                        // The producer of the request being read (`refuse` sees its head first):
                        // its body is held against the producer's share of `arriving`.
                        var share: PendingBytes?, producerName = ""
                        try await HTTPRequests.serve(inbound, maxBodyBytes: configuration.maxBodyBytes, pending: { _ in share }) { h in
                            // A HEAD request with a body is refused, written nowhere, as KT refuses it.
                            if h.method == .HEAD, let n = h.headers.first(name: "content-length").flatMap(Int.init), n > 0 {
                                metrics.badRequests.increment()
                                badLog.warning(logger, "request refused: HEAD with a body", peer: peer)
                                await enqueue(h, keepAlive: false) { RestReply(status: 400) }
                                return true
                            }
                            // No producer, no body: a request without a valid credential is answered
                            // from its head, and its body is dropped as it arrives, never held.
                            switch authenticate(h, peer: peer) {
                            case let .success(producer):
                                share = arriving.share(of: producer.name)
                                producerName = producer.name
                                return false
                            case let .failure(refusal):
                                await enqueue(h, keepAlive: false) { refusal.reply }
                                return true
                            }
                        } tooLarge: { h in
                            metrics.badRequests.increment()
                            badLog.warning(logger, "request refused: body too large", peer: peer, metadata: ["limit": "\(configuration.maxBodyBytes)"])
                            let limit = configuration.maxBodyBytes
                            await enqueue(h, keepAlive: false) { .text(413, "request body over \(limit) bytes (--max-body)") }
                        } overBudget: { h, refusedBy in
                            metrics.arrivingRefused.increment()
                            let all = refusedBy.parent == nil
                            let what = all ? "the bodies arriving on all connections hold all of --max-arriving-bytes"
                                : "the producer's bodies arriving on its connections hold all of its share, --max-arriving-bytes-per-producer"
                            arrivingLog.log(logger, .warning, "request refused: \(what)", budget: all ? "arriving bytes" : "arriving bytes of \(producerName)",
                                            metadata: ["peer": "\(peer)", "producer": "\(producerName)", "limit-bytes": "\(refusedBy.limit)"])
                            await enqueue(h, keepAlive: false) {
                                RestReply.error(503, "\(what); nothing of this request was written: try again")
                                    .adding(("Retry-After", "1"))
                            }
                        } answer: { h, body in
                            // In flight, and answering, until its answer is written
                            // (`HTTPRequestMarks`): a graceful stop and the idle timeout wait for it.
                            // Its commit timeout counts from here, the whole request arrived:
                            // its parse and a quota's delay are part of its wait.
                            let arrived = ContinuousClock.now
                            switch await prepare(h, body: body, peer: peer, budget: share) {
                            case let .reply(reply):
                                // Held against the connection's answers ahead (`maxAheadBytes`):
                                // 60 pipelined 4 MB echoes, unread, held 250 MB counted nowhere.
                                await enqueue(h, keepAlive: h.isKeepAlive, bytes: reply.body.count) { reply }
                            case let .writes(w):
                                // Queued here, in the order the requests came; answered apart.
                                let ticket: Result<WriteQueue.Ticket, any Error>
                                do { ticket = .success(try await queue.enqueue(w.list, arrived: arrived)) } catch { ticket = .failure(error) }
                                await enqueue(h, keepAlive: h.isKeepAlive, bytes: w.bytes) {
                                    switch ticket {
                                    case let .success(t):
                                        do { return conclude(w, .success(try await t.answer)) } catch { return conclude(w, .failure(error)) }
                                    case let .failure(error):
                                        return conclude(w, .failure(error))
                                    }
                                }
                            }
                            return h.isKeepAlive
                        }
                    } catch let error as HTTPParserError {
                        // Unparsable HTTP behind requests already read: their answers are written
                        // first, then the 400, then the close. (NIO's error handler wrote its 400
                        // at once, in the place of an answer owed: a write applied read as refused,
                        // and a producer retrying an increment applied it twice.)
                        metrics.badRequests.increment()
                        badLog.warning(logger, "bad request: unparsable HTTP", peer: peer, metadata: ["error": "\(error)"])
                        await enqueue(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/"), keepAlive: false) {
                            .text(400, "unparsable HTTP (\(error)): the requests before it were answered above; the connection closes")
                        }
                    } catch {
                        queued.finish()
                        throw error
                    }
                    queued.finish()
                    try await group.waitForAll()
                }
            }
        } catch is Closing {
        } catch {
            logger.debug("connection ended with an error", metadata: ["peer": "\(peer)", "error": "\(error)"])
        }
    }

    /// A connection that spoke KT's binary protocol (already answered 0xBF and closed).
    func refuseBinary(magic: UInt8, peer: String) {
        metrics.binaryRefused.increment()
        binaryLog.warning(logger, "KT binary protocol refused: it carries no producer credential; use HTTP RPC with a credential (docs/runbook.md, section 9)",
                        peer: peer, metadata: ["magic": "0x\(String(magic, radix: 16, uppercase: true))"])
    }

    private func write(_ r: RestReply, head: HTTPRequestHead, keepAlive: Bool,
                       outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>) async throws {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Length", value: "\(r.body.count)")
        for (n, v) in r.headers { headers.add(name: n, value: v) }
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        let status = HTTPResponseStatus(statusCode: r.status, reasonPhrase: KTHTTPStatus.reason(r.status))
        var parts: [HTTPServerResponsePart] = [.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))]
        if !r.body.isEmpty { parts.append(.body(.byteBuffer(ByteBuffer(bytes: r.body)))) }
        parts.append(.end(nil))
        // One hop to the event loop: a graceful stop comes before the whole answer or after
        // it, never between its head (where the marks decide `Connection: close`) and its end.
        try await outbound.write(contentsOf: parts)
    }
}

extension RestReply {
    func adding(_ header: (String, String)) -> RestReply {
        var r = self
        r.headers.append(header)
        return r
    }
}
