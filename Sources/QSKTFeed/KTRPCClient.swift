import KTFormats
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import QSNet

/// One answer of KT's HTTP RPC: the status code and the TSV columns (decoded).
public struct KTRPCAnswer: Sendable {
    public var status: Int
    public var columns: [[UInt8]: [UInt8]]

    public subscript(_ name: String) -> [UInt8]? { columns[Array(name.utf8)] }
    public func string(_ name: String) -> String? { self[name].map { String(decoding: $0, as: UTF8.self) } }
    /// KT's `ERROR` column, for messages.
    public var error: String { string("ERROR") ?? "status \(status)" }
}

/// One procedure call: its name and parameters (sent in column encoding B, base64).
public struct KTRPCCall: Sendable {
    public var procedure: String
    public var parameters: [(String, [UInt8])]

    public init(_ procedure: String, _ parameters: [(String, [UInt8])] = []) {
        self.procedure = procedure
        self.parameters = parameters
    }
}

/// A client of KT's HTTP RPC (`POST /rpc/NAME`, TSV bodies), as any KT client speaks it:
/// one keep-alive connection on which a page of calls is pipelined (all requests written,
/// then the answers read in order), so a cursor walk costs one round trip per page rather
/// than per record. ktserver and fakekt both answer pipelined requests in order.
public struct KTRPCClient: Sendable {
    public let host: String
    public let port: Int
    /// With an answer owed and no byte of it for this long, the connection is given up (a
    /// connection that owes none is never idle: `AnswerTimeout`).
    public let timeout: Duration
    /// The largest answer accepted (a record's value plus its columns).
    public let maxAnswerBytes: Int
    public let connectTimeout: Duration

    public var name: String { "kt://\(host):\(port)" }

    public init(host: String, port: Int, timeout: Duration = .seconds(10), maxAnswerBytes: Int = 256 << 20,
                connectTimeout: Duration = .seconds(5)) {
        self.host = host
        self.port = port
        self.timeout = timeout
        self.maxAnswerBytes = maxAnswerBytes
        self.connectTimeout = connectTimeout
    }

    /// The connection `body` calls through (to `address` when given, the server `host`
    /// resolved to for another connection); closed when `body` returns or throws.
    public func withConnection<T: Sendable>(to address: SocketAddress? = nil,
                                            _ body: (KTRPCConnection) async throws -> T) async throws -> T {
        let readTimeout = TimeAmount.nanoseconds(Int64(timeout.seconds * 1e9))
        let answers = KTRPCAnswers(), limit = maxAnswerBytes
        let bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.nanoseconds(Int64(connectTimeout.seconds * 1e9)))
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
        let initializer: @Sendable (any Channel) -> EventLoopFuture<NIOAsyncChannel<KTRPCAnswerReady, HTTPClientRequestPart>> = { channel in
                channel.eventLoop.makeCompletedFuture {
                    let ops = channel.pipeline.syncOperations
                    try ops.addHTTPClientHandlers()
                    try ops.addHandler(AnswerTimeout(timeout: readTimeout))
                    try ops.addHandler(KTRPCAnswerAssembler(answers: answers, limit: limit))
                    return try NIOAsyncChannel<KTRPCAnswerReady, HTTPClientRequestPart>(wrappingChannelSynchronously: channel)
                }
            }
        let channel: NIOAsyncChannel<KTRPCAnswerReady, HTTPClientRequestPart>
        if let address {
            channel = try await bootstrap.connect(to: address, channelInitializer: initializer)
        } else {
            channel = try await bootstrap.connect(host: host, port: port, channelInitializer: initializer)
        }
        let host = self.host, port = self.port
        return try await channel.executeThenClose { inbound, outbound in
            let connection = KTRPCConnection(host: host, port: port, answers: answers, inbound: inbound.makeAsyncIterator(), outbound: outbound)
            return try await body(connection)
        }
    }
}

/// Why a KT RPC call failed (apart from an error status, which is an answer).
public enum KTRPCError: Error, CustomStringConvertible, Sendable {
    case timeout
    case closed
    case tooLarge(Int)
    case unexpected(String)

    public var description: String {
        switch self {
        case .timeout: return "no answer from KT's HTTP RPC within the source timeout"
        case .closed: return "KT closed the HTTP connection"
        case let .tooLarge(n): return "a KT answer larger than \(n) bytes"
        case let .unexpected(what): return "unexpected HTTP answer from KT: \(what)"
        }
    }
}

/// One open connection of `KTRPCClient`; used by one task at a time.
public final class KTRPCConnection {
    let host: String
    let port: Int
    let answers: KTRPCAnswers
    var inbound: NIOAsyncChannelInboundStream<KTRPCAnswerReady>.AsyncIterator
    let outbound: NIOAsyncChannelOutboundWriter<HTTPClientRequestPart>

    init(host: String, port: Int, answers: KTRPCAnswers, inbound: NIOAsyncChannelInboundStream<KTRPCAnswerReady>.AsyncIterator,
         outbound: NIOAsyncChannelOutboundWriter<HTTPClientRequestPart>) {
        self.host = host
        self.port = port
        self.answers = answers
        self.inbound = inbound
        self.outbound = outbound
    }

    /// One call.
    public func call(_ procedure: String, _ parameters: [(String, [UInt8])] = []) async throws -> KTRPCAnswer {
        try await pipeline([KTRPCCall(procedure, parameters)])[0]
    }

    /// Sends every call, then reads their answers in order.
    public func pipeline(_ calls: [KTRPCCall]) async throws -> [KTRPCAnswer] {
        var parts = [HTTPClientRequestPart]()
        parts.reserveCapacity(calls.count * 3)
        for c in calls {
            var body = [UInt8]()
            for (name, value) in c.parameters {
                body += KTColumnEncoding.base64.encode(Array(name.utf8)) + [9] + KTColumnEncoding.base64.encode(value) + [10]
            }
            var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/rpc/\(c.procedure)")
            head.headers.add(name: "Host", value: "\(host):\(port)")
            head.headers.add(name: "Content-Type", value: "\(KTTSV.mediaType); colenc=B")
            head.headers.add(name: "Content-Length", value: String(body.count))
            parts.append(.head(head))
            if !body.isEmpty { parts.append(.body(.byteBuffer(ByteBuffer(bytes: body)))) }
            parts.append(.end(nil))
        }
        try await outbound.write(contentsOf: parts)
        var answers = [KTRPCAnswer]()
        answers.reserveCapacity(calls.count)
        while answers.count < calls.count { answers.append(try await readAnswer()) }
        return answers
    }

    /// The next answer: the channel says one is ready, `answers` holds it.
    private func readAnswer() async throws -> KTRPCAnswer {
        guard try await inbound.next() != nil, let answer = answers.take() else { throw KTRPCError.closed }
        return answer
    }
}

/// A KT RPC connection's timeout: closes it (firing `KTRPCError.timeout` first) when an
/// answer is owed and nothing of it came for `timeout`. A connection that owes no answer
/// is never idle, so one kept open between calls (the update log read about once a
/// second) stays open; KT closes it when it is idle past its own timeout.
final class AnswerTimeout: ChannelDuplexHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias InboundOut = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    let timeout: TimeAmount
    /// Requests written whose answers have not ended.
    private var owed = 0
    private var deadline: Scheduled<Void>?
    /// Which arming a scheduled expiry belongs to (one cancelled too late finds it moved on).
    private var generation = 0

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) {
            owed += 1
            if deadline == nil { arm(context) }
        }
        context.write(data, promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .end = unwrapInboundIn(data) { owed = max(0, owed - 1) }  // an answer never asked for owes nothing
        disarm()
        if owed > 0 { arm(context) }
        context.fireChannelRead(data)
    }

    func channelInactive(context: ChannelHandlerContext) {
        disarm()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        disarm()
    }

    private func arm(_ context: ChannelHandlerContext) {
        generation += 1
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop), armed = generation
        deadline = context.eventLoop.scheduleTask(in: timeout) {
            let (handler, context) = bound.value
            guard handler.deadline != nil, armed == handler.generation else { return }
            handler.deadline = nil
            context.fireErrorCaught(KTRPCError.timeout)
            context.close(promise: nil)
        }
    }

    private func disarm() {
        deadline?.cancel()
        deadline = nil
        generation += 1
    }
}

/// Says that `KTRPCAnswerAssembler` put one more answer in the connection's `KTRPCAnswers`.
struct KTRPCAnswerReady: Sendable {}

/// Answers assembled on the event loop, in order, until the connection's reader takes them.
final class KTRPCAnswers: Sendable {
    private let queue = NIOLockedValueBox(CircularBuffer<KTRPCAnswer>())

    func put(_ answer: KTRPCAnswer) { queue.withLockedValue { $0.append(answer) } }
    func take() -> KTRPCAnswer? { queue.withLockedValue { $0.popFirst() } }
}

/// Assembles each of KT's HTTP answers on the event loop (head, body up to `limit` bytes,
/// end; the TSV columns decoded), puts it in `answers` and passes on only a
/// `KTRPCAnswerReady`. The answer crosses from the event loop to the reading task through
/// `answers`' lock, an order ThreadSanitizer sees. A value handed over in the channel's
/// inbound stream itself crosses through a continuation, which the Swift runtime completes
/// without telling ThreadSanitizer when the resume comes before the reader awaits: its
/// fields, written here, were reported as a race when read (docs/reliability.md).
/// A bad answer fails the stream with the error (`tooLarge`, `unexpected`); what follows
/// it is dropped.
final class KTRPCAnswerAssembler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias InboundOut = KTRPCAnswerReady

    let answers: KTRPCAnswers
    let limit: Int
    private var status = 0
    private var contentType = ""
    private var body = [UInt8]()
    private var failed = false

    init(answers: KTRPCAnswers, limit: Int) {
        self.answers = answers
        self.limit = limit
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        switch unwrapInboundIn(data) {
        case let .head(h):
            status = Int(h.status.code)
            contentType = h.headers.first(name: "Content-Type") ?? ""
            body.removeAll(keepingCapacity: true)
        case let .body(buffer):
            guard body.count + buffer.readableBytes <= limit else { return fail(context, KTRPCError.tooLarge(limit)) }
            body += buffer.readableBytesView
        case .end:
            guard status != 0 else { return fail(context, KTRPCError.unexpected("an answer without a status line")) }
            var columns = [[UInt8]: [UInt8]]()
            if case let .tsv(encoding) = KTTSV.bodyKind(contentType: contentType) {
                for (name, value) in KTTSV.parse(body, encoding: encoding) { columns[name] = value }
            }
            answers.put(KTRPCAnswer(status: status, columns: columns))
            status = 0
            contentType = ""
            body.removeAll(keepingCapacity: true)
            context.fireChannelRead(wrapInboundOut(KTRPCAnswerReady()))
        }
    }

    private func fail(_ context: ChannelHandlerContext, _ error: any Error) {
        failed = true
        context.fireErrorCaught(error)
    }
}
