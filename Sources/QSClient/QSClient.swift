import NIOCore
import NIOExtras
import NIOPosix
import QSBytes
import QSModel
import QSNet
import QSWire

/// Why a call to a node failed.
public enum ClientError: Error, Sendable, CustomStringConvertible, Equatable {
    /// The node answered with an error response.
    case server(code: UInt16, message: String)
    /// The node answered with a response that does not fit the request.
    case unexpected(String)
    case connectionClosed
    case connectionFailed(String)
    case timedOut

    public var description: String {
        switch self {
        case let .server(code, message):
            let name = ErrorCode(rawValue: code).map { "\($0)" } ?? "code \(code)"
            return "node error (\(name)): \(message)"
        case let .unexpected(what): return "unexpected response from node: \(what)"
        case .connectionClosed: return "the node closed the connection"
        case let .connectionFailed(why): return "the connection to the node failed: \(why)"
        case .timedOut: return "the node did not answer in time"
        }
    }

    /// A connection-level failure from SwiftNIO as `connectionFailed`, in words an operator
    /// reads ("Connection refused") instead of NIO's type dumps (callers name the node).
    /// Other errors are returned as they are.
    static func connection(_ error: any Error) -> any Error {
        switch error {
        case let error as NIOConnectionError:
            let reasons = error.connectionErrors.map { Self.words($0.error) }
            let dns = [error.dnsAError, error.dnsAAAAError].compactMap { $0 }.map { "name lookup: \($0)" }
            let all = Array(Set(reasons + dns)).sorted()
            return ClientError.connectionFailed((all.isEmpty ? "no address to connect to" : all.joined(separator: "; ")))
        case let error as IOError:
            return ClientError.connectionFailed(Self.words(error))
        case let error as ChannelError:
            if case let .connectTimeout(t) = error {
                return ClientError.connectionFailed("no connection within \(t.nanoseconds / 1_000_000) ms")
            }
            return ClientError.connectionFailed("\(error)")
        default:
            return error
        }
    }

    private static func words(_ error: any Error) -> String {
        if let io = error as? IOError { return String(cString: strerror(io.errnoCode)) }
        return "\(error)"
    }
}

/// A connection to a node speaking the QS write protocol. Requests may be issued
/// concurrently: they are pipelined and answered in order.
public final class QSClient: Sendable {
    let channel: Channel
    public let token: [UInt8]
    /// How long a request waits for its answer when the call names no timeout of its own:
    /// a node that stops answering (stopped, overloaded, cut off) fails the call with
    /// `ClientError.timedOut` after this long.
    public let requestTimeout: TimeAmount
    /// Whether writes (and hello) go in the checked envelope (`CheckedFrames`): the node
    /// takes them (`connect(writeChecking:)`).
    public let checksWrites: Bool
    /// The node's end of the connection, as the socket has it (numeric).
    public var remoteAddress: SocketAddress? { channel.remoteAddress }

    init(channel: Channel, token: [UInt8], requestTimeout: TimeAmount = .seconds(60), checksWrites: Bool = false) {
        self.channel = channel
        self.token = token
        self.requestTimeout = requestTimeout
        self.checksWrites = checksWrites
    }

    /// Whether a connection's writes go checked (`CheckedFrames`): not, after a probe of
    /// the node (`checking`), or without one (the node is known to take them).
    public enum WriteChecking: Sendable, Equatable {
        case plain, probe, checked
    }

    /// A connection from `make`, its writes checked as `mode` says.
    static func made(_ mode: WriteChecking, _ make: () async throws -> QSClient) async throws -> QSClient {
        switch mode {
        case .plain: return try await make()
        case .probe: return try await checking(make)
        case .checked:
            let c = try await make()
            return QSClient(channel: c.channel, token: c.token, requestTimeout: c.requestTimeout, checksWrites: true)
        }
    }

    /// How long a writer's connection waits for the answer to its checked probe before it
    /// is used with plain frames (a hung node: its later answer is read and dropped).
    static let probeWait: TimeAmount = .seconds(1)

    /// A connection from `make` whose writes go checked (`CheckedFrames`) when the node
    /// knows the envelope: a `head` in one is sent first. A node older than the envelope
    /// answers it `malformed` ("unknown request type 0x30") and closes the connection:
    /// a new one is made and used with plain frames. Any other answer (the head, a refusal
    /// of the read) comes from a node that decoded the envelope (after a refusal, which may
    /// have closed the connection, a new one is made and used checked).
    static func checking(_ make: () async throws -> QSClient) async throws -> QSClient {
        let client = try await make()
        guard let frame = try await client.answer(to: CheckedFrames.wrap(Request.head.frame()), within: probeWait) else {
            // No answer in time (or the connection failed): plain frames, as before the envelope.
            return client
        }
        if case let .error(code, message)? = try? Response.decode(frame) {
            await client.close()
            let again = try await make()
            if code == ErrorCode.malformed.rawValue, message.contains(CheckedFrames.unknownToNode) {
                return again
            }
            // Another refusal (a read refused without a token closes the connection): the
            // node decoded the envelope; a new connection says what the hello is answered.
            return QSClient(channel: again.channel, token: again.token, requestTimeout: again.requestTimeout, checksWrites: true)
        }
        return QSClient(channel: client.channel, token: client.token, requestTimeout: client.requestTimeout, checksWrites: true)
    }

    /// Connects to `HOST:PORT`. `readToken` (nil: `token`) is presented at once (`auth`)
    /// when it is not empty, whatever the address: a node answers reads from another
    /// machine only on a connection that presented one of its tokens, and what the node
    /// sees (a loopback forwarder's address is not) decides, not what was dialled. A node
    /// refusing it is thrown (`ClientError.server`, `unauthorized`); with `refusalThrows`
    /// false the connection is made again without it (a writer whose hello then says why:
    /// a replica takes no writes, the write token is wrong).
    /// `writeChecking`: whether the connection's writes go checked (`WriteChecking`).
    public static func connect(host: String, port: Int, token: [UInt8] = [], readToken: [UInt8]? = nil,
                               refusalThrows: Bool = true, writeChecking: WriteChecking = .plain,
                               maxFrameBytes: Int = defaultMaxFrameBytes,
                               group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                               timeout: TimeAmount = .seconds(5),
                               requestTimeout: TimeAmount = .seconds(60)) async throws -> QSClient {
        let make = {
            try await authenticated(readToken ?? token, refusalThrows: refusalThrows) {
                let channel: Channel
                do {
                    channel = try await bootstrap(group: group, maxFrameBytes: maxFrameBytes, timeout: timeout)
                        .connect(host: host, port: port).get()
                } catch {
                    throw ClientError.connection(error)
                }
                return QSClient(channel: channel, token: token, requestTimeout: requestTimeout)
            }
        }
        return try await made(writeChecking, make)
    }

    /// Connects to a Unix socket (a local peer: no token is presented for reads);
    /// `writeChecking` as for `connect(host:port:)`.
    public static func connect(unixPath: String, token: [UInt8] = [], writeChecking: WriteChecking = .plain,
                               maxFrameBytes: Int = defaultMaxFrameBytes,
                               group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                               requestTimeout: TimeAmount = .seconds(60)) async throws -> QSClient {
        let make = {
            let channel: Channel
            do {
                channel = try await bootstrap(group: group, maxFrameBytes: maxFrameBytes, timeout: .seconds(5))
                    .connect(unixDomainSocketPath: unixPath).get()
            } catch {
                throw ClientError.connection(error)
            }
            return QSClient(channel: channel, token: token, requestTimeout: requestTimeout)
        }
        return try await made(writeChecking, make)
    }

    /// Connects to `endpoint`, TCP or a Unix socket; `readToken` as for `connect(host:port:)`.
    public static func connect(to endpoint: Endpoint, token: [UInt8] = [], readToken: [UInt8]? = nil, refusalThrows: Bool = true,
                               writeChecking: WriteChecking = .plain, requestTimeout: TimeAmount = .seconds(60)) async throws -> QSClient {
        switch endpoint {
        case let .tcp(host, port):
            return try await connect(host: host, port: port, token: token, readToken: readToken, refusalThrows: refusalThrows,
                                     writeChecking: writeChecking, requestTimeout: requestTimeout)
        case let .unix(path): return try await connect(unixPath: path, token: token, writeChecking: writeChecking, requestTimeout: requestTimeout)
        }
    }

    /// A connection from `make` that has presented `readToken` (`auth`), unless it is empty.
    /// A node older than `auth` refuses it as malformed and closes the connection; it
    /// answers reads without a token, so a new connection is made and used as it is. A
    /// refused token is thrown (`ClientError.server`, `unauthorized`), or with
    /// `refusalThrows` false a new connection is made without it.
    /// How long a connection waits for its auth's answer before it is used anyway.
    static let authWait: TimeAmount = .seconds(1)

    /// Sends `frame` and waits `within` for its answer, a moment rather than a request's
    /// timeout: nil when none came by then (the answer, if one comes, is read and dropped:
    /// the requests pipelined behind it are answered in order) or the connection failed.
    func answer(to frame: Frame, within: TimeAmount) async throws -> Frame? {
        let pending = start(frame: frame)
        let loop = channel.eventLoop
        let first = loop.makePromise(of: Frame?.self)
        pending.whenComplete { if case let .success(frame) = $0 { first.succeed(frame) } else { first.succeed(nil) } }
        let waited = loop.scheduleTask(in: within) { first.succeed(nil) }
        defer { waited.cancel() }
        return try await first.futureResult.get()
    }

    static func authenticated(_ readToken: [UInt8], refusalThrows: Bool = true,
                              _ make: () async throws -> QSClient) async throws -> QSClient {
        let client = try await make()
        guard !readToken.isEmpty else { return client }
        // The answer is waited for a moment, not a request's timeout: a node that is slow or
        // hung is then met by the requests that follow (pipelined behind the auth, answered
        // in order), as before there was an auth, and their own timeouts say so.
        guard let frame = try await client.answer(to: Request.auth(token: readToken).frame(), within: authWait),
              let answer = try? Response.decode(frame) else { return client }
        switch answer {
        case .head:
            return client
        case let .error(code, _) where [.malformed, .invalidRequest, .unsupported].contains(ErrorCode(rawValue: code)):
            // A node that predates auth (or answers it as something it does not serve).
            await client.close()
            return try await make()
        case let .error(code, _) where ErrorCode(rawValue: code) == .unauthorized && !refusalThrows:
            await client.close()
            return try await make()
        case let .error(code, message):
            await client.close()
            throw ClientError.server(code: code, message: message)
        default:
            await client.close()
            throw ClientError.unexpected("\(answer) to auth")
        }
    }

    static func bootstrap(group: any EventLoopGroup, maxFrameBytes: Int, timeout: TimeAmount) -> ClientBootstrap {
        ClientBootstrap(group: group)
            .connectTimeout(timeout)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let ops = channel.pipeline.syncOperations
                    try ops.addHandler(FrameDecoder.handler(maxFrameBytes: maxFrameBytes))
                    try ops.addHandler(MessageToByteHandler(FrameEncoder()))
                    try ops.addHandler(RequestResponseHandler<Frame, Frame>())
                }
            }
    }

    /// Sends one request and waits for its response (error responses are returned, not
    /// thrown; see the typed helpers for that); `timeout` nil is `requestTimeout`.
    /// A read the node answers `busy` (its reply budget is full of answers other clients
    /// have not read yet; nothing changed) is asked again after a pause (50 ms, doubling to
    /// 1 s) until the request's timeout would pass: then the `busy` answer is returned.
    public func send(_ request: Request, timeout: TimeAmount? = nil) async throws -> Response {
        let giveUp = ContinuousClock.now + .nanoseconds((timeout ?? requestTimeout).nanoseconds)
        var pause = Duration.milliseconds(50)
        while true {
            let r = try await Self.response(start(request, timeout: timeout))
            guard case let .error(code, _) = r, code == ErrorCode.busy.rawValue, !request.isWrite,
                  ContinuousClock.now + pause < giveUp else { return r }
            try await Task.sleep(for: pause)
            pause = min(pause * 2, .seconds(1))
        }
    }

    /// Sends `request` without waiting for its answer: requests started one after another
    /// from one task reach the node in that order and are answered in that order (a
    /// pipelined writer keeps several batches in flight). `response(_:)` waits for one.
    public func start(_ request: Request, timeout: TimeAmount? = nil) -> EventLoopFuture<Frame> {
        start(frame: request.frame(), timeout: timeout)
    }

    /// `start` for a request already encoded (`Request.frame()`): a pipelined writer can
    /// encode its next batch while the one before is in flight, off the path that waits.
    public func start(frame: Frame, timeout: TimeAmount? = nil) -> EventLoopFuture<Frame> {
        let frame = checksWrites && CheckedFrames.wraps(frame.type) ? CheckedFrames.wrap(frame) : frame
        let timeout = timeout ?? requestTimeout
        let promise = channel.eventLoop.makePromise(of: Frame.self)
        // A write that fails (the connection closed meanwhile) fails the request too, and a
        // node that never answers fails it after `timeout`: a caller never waits forever.
        let written = channel.eventLoop.makePromise(of: Void.self)
        written.futureResult.whenFailure { promise.fail($0) }
        let deadline = channel.eventLoop.scheduleTask(in: timeout) { promise.fail(ClientError.timedOut) }
        promise.futureResult.whenComplete { _ in deadline.cancel() }
        channel.writeAndFlush((frame, promise), promise: written)
        return promise.futureResult
    }

    /// The answer to a request `start` sent (error responses are returned, not thrown).
    /// A cancelled task stops waiting at once (`CancellationError`): a node that does not
    /// answer held a shutting-down bridge for the whole request timeout. The request's
    /// outcome is then unknown; its answer, if one comes, is read and dropped.
    public static func response(_ pending: EventLoopFuture<Frame>) async throws -> Response {
        let frame: Frame
        do {
            let waited = pending.eventLoop.makePromise(of: Frame.self)
            pending.cascade(to: waited)
            // A promise completed twice keeps its first result: the answer or the cancellation.
            frame = try await withTaskCancellationHandler {
                try await waited.futureResult.get()
            } onCancel: {
                waited.fail(CancellationError())
            }
        } catch is NIOExtrasErrors.ClosedBeforeReceivingResponse {
            throw ClientError.connectionClosed
        } catch let error as ChannelError {
            throw ClientError.connection(error)
        } catch let error as IOError {
            throw ClientError.connection(error)
        }
        return try Response.decode(frame)
    }

    public func close() async {
        try? await channel.close()
    }

    // MARK: typed helpers

    /// Sends a compare-and-swap batch; returns `.applied` or `.conflict`, throws on errors.
    public func batch(sourceID: String, expected: UInt64, new: UInt64, operations: [Mutation]) async throws -> Response {
        let r = try await send(.batch(.init(token: token, sourceID: sourceID, expected: expected, new: new, operations: operations)))
        switch r {
        case .applied, .conflict: return r
        default: throw Self.failure(r)
        }
    }

    public func checkpoint(sourceID: String) async throws -> UInt64? {
        let r = try await send(.getCheckpoint(sourceID: sourceID))
        guard case let .checkpoint(cp) = r else { throw Self.failure(r) }
        return cp
    }

    public func head(timeout: TimeAmount? = nil) async throws -> Head {
        let r = try await send(.head, timeout: timeout)
        guard case let .head(h) = r else { throw Self.failure(r) }
        return h
    }

    public func entries(from: UInt64, count: UInt32) async throws -> [StoredEntry] {
        let r = try await send(.readLog(from: from, count: count))
        guard case let .entries(list) = r else { throw Self.failure(r) }
        return list
    }

    public func get(_ key: [UInt8]) async throws -> Record? {
        let r = try await send(.get(key: key))
        guard case let .value(v) = r else { throw Self.failure(r) }
        return v
    }

    public func scan(prefix: [UInt8] = [], cursor: [UInt8] = [], limit: UInt32 = 1000,
                     asOf: UInt64 = 0) async throws -> (records: [Response.ScanRecord], next: [UInt8]?) {
        let r = try await send(.scan(prefix: prefix, cursor: cursor, limit: limit, asOf: asOf))
        guard case let .page(records, next) = r else { throw Self.failure(r) }
        return (records, next)
    }

    public func digest(after: [UInt8], through: [UInt8], limit: UInt32, asOf: UInt64) async throws -> (count: UInt64, hash: [UInt8], last: [UInt8], more: Bool) {
        let r = try await send(.digest(after: after, through: through, limit: limit, asOf: asOf))
        guard case let .digest(count, hash, last, more) = r else { throw Self.failure(r) }
        return (count, hash, last, more)
    }

    public func rangeRecords(after: [UInt8], through: [UInt8], limit: UInt32, asOf: UInt64) async throws -> [Response.ScanRecord] {
        let r = try await send(.rangeRecords(after: after, through: through, limit: limit, asOf: asOf))
        guard case let .page(records, _) = r else { throw Self.failure(r) }
        return records
    }

    /// The node's status (JSON object text).
    public func status(timeout: TimeAmount? = nil) async throws -> String {
        let r = try await send(.status, timeout: timeout)
        guard case let .status(json) = r else { throw Self.failure(r) }
        return json
    }

    /// Promotes a compatible mirror to a writable root, or demotes a root to a compatible
    /// mirror (an operator's action, carrying `adminToken` — the node's `--admin-token-file`
    /// — or, when nil, the write token the client was made with); returns the head the
    /// change happened at.
    public func changeRole(_ change: Request.RoleChange, adminToken: [UInt8]? = nil, timeout: TimeAmount? = nil) async throws -> Head {
        let r = try await send(.changeRole(token: adminToken ?? token, change: change), timeout: timeout)
        guard case let .head(h) = r else { throw Self.failure(r) }
        return h
    }

    /// Writes operations as source `sourceID` without knowing its checkpoint: reads it,
    /// sends a batch at checkpoint+1, and retries on conflict (for operators and tests;
    /// bridges track their positions themselves).
    public func write(_ operations: [Mutation], sourceID: String = "qsctl", attempts: Int = 10) async throws -> Response {
        for _ in 0..<attempts {
            let cp = try await checkpoint(sourceID: sourceID) ?? 0
            let r = try await batch(sourceID: sourceID, expected: cp, new: cp + 1, operations: operations)
            if case .applied = r { return r }
        }
        throw ClientError.unexpected("batch for \(sourceID) kept conflicting after \(attempts) attempts")
    }

    static func failure(_ r: Response) -> ClientError {
        if case let .error(code, message) = r { return .server(code: code, message: message) }
        return .unexpected("\(r)")
    }
}
