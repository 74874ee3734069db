import Foundation
import Logging
import NIOCore
import QSClient
import QSNet
import QSModel
import QSWire

/// One connection to a root, as the root writer uses it. `QSClient` is the one bridges
/// use; tests pass a scripted root through `RootWriter.init(endpoint:token:logger:metrics:connect:)`.
/// The typed calls throw `ClientError.server` for an error answer, like `QSClient`'s.
public protocol RootConnection: Sendable {
    func checkpoint(sourceID: String) async throws -> UInt64?
    func batch(sourceID: String, expected: UInt64, new: UInt64, operations: [Mutation]) async throws -> Response
    func head() async throws -> Head
    /// Sends one request and returns its answer, error answers included.
    func send(_ request: Request, timeout: TimeAmount) async throws -> Response
    func close() async
}

extension QSClient: RootConnection {}

/// The bridge's side of the root: one connection, re-made with capped backoff whenever
/// it fails, for as long as the task is not cancelled.
public actor RootWriter {
    public let endpoint: Endpoint
    let token: [UInt8]
    let logger: Logger
    let metrics: FeedMetrics
    let connect: @Sendable () async throws -> any RootConnection
    private var client: (any RootConnection)?
    public private(set) var connected = false

    /// A writer to the root at `endpoint`, over `QSClient`.
    public init(endpoint: Endpoint, token: [UInt8], logger: Logger, metrics: FeedMetrics) {
        self.init(endpoint: endpoint, token: token, logger: logger, metrics: metrics) {
            switch endpoint {
            case let .tcp(host, port): try await QSClient.connect(host: host, port: port, token: token)
            case let .unix(path): try await QSClient.connect(unixPath: path, token: token)
            }
        }
    }

    /// A writer whose connections come from `connect` (`endpoint` only names the root in logs).
    public init(endpoint: Endpoint, token: [UInt8], logger: Logger, metrics: FeedMetrics,
                connect: @escaping @Sendable () async throws -> any RootConnection) {
        self.endpoint = endpoint
        self.token = token
        self.logger = logger
        self.metrics = metrics
        self.connect = connect
    }

    private func connection() async throws -> any RootConnection {
        if let client { return client }
        let c = try await connect()
        client = c
        connected = true
        logger.info("connected to root", metadata: ["root": "\(endpoint)"])
        return c
    }

    private func drop() async {
        if let client {
            metrics.reconnects.increment()
            await client.close()
        }
        client = nil
        connected = false
    }

    /// Runs `call` against the root, retrying on connection failures with backoff. Node
    /// errors that retrying cannot cure (unauthorized, invalid request) stop the bridge.
    public func perform<T: Sendable>(_ what: String, _ call: @Sendable (any RootConnection) async throws -> T) async throws -> T {
        var backoff = Backoff()
        while true {
            try Task.checkCancellation()
            do {
                return try await call(try await connection())
            } catch let error as ClientError {
                if case let .server(code, message) = error {
                    switch ErrorCode(rawValue: code) {
                    case .unauthorized, .invalidRequest, .unsupported, .malformed:
                        throw FeedError.stop("root refused \(what): \(message)")
                    default: break
                    }
                }
                metrics.rootErrors.increment()
                logger.warning("root call failed, retrying", metadata: ["call": "\(what)", "error": "\(error)", "root": "\(endpoint)"])
                await drop()
            } catch is CancellationError {
                throw CancellationError()
            } catch let error as FeedError {
                throw error
            } catch {
                metrics.rootErrors.increment()
                logger.warning("root unreachable, retrying", metadata: ["call": "\(what)", "error": "\(error)", "root": "\(endpoint)"])
                await drop()
            }
            try await Task.sleep(for: backoff.next())
        }
    }

    public func checkpoint(sourceID: String) async throws -> UInt64? {
        try await perform("get-checkpoint") { try await $0.checkpoint(sourceID: sourceID) }
    }

    public func batch(sourceID: String, expected: UInt64, new: UInt64, operations: [Mutation]) async throws -> Response {
        try await perform("batch") { try await $0.batch(sourceID: sourceID, expected: expected, new: new, operations: operations) }
    }

    /// Compatible-mode write: entries appended verbatim.
    public func append(_ entries: [StoredEntry]) async throws -> Response {
        let token = self.token
        return try await perform("append") { client in
            let r = try await client.send(.append(token: token, entries: entries), timeout: .seconds(60))
            switch r {
            case .applied, .conflict: return r
            case let .error(code, message):
                if ErrorCode(rawValue: code) == .diverged {
                    throw FeedError.stop("the target root has another history than the source: \(message)")
                }
                throw ClientError.server(code: code, message: message)
            default: throw ClientError.unexpected("\(r)")
            }
        }
    }

    public func head() async throws -> Head {
        try await perform("head") { try await $0.head() }
    }

    /// Every source's checkpoint at the root (from its status).
    public func checkpoints() async throws -> [String: UInt64] {
        let json = try await perform("status") { client -> String in
            let r = try await client.send(.status, timeout: .seconds(30))
            guard case let .status(json) = r else { throw ClientError.unexpected("\(r)") }
            return json
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any],
              let sources = object["sources"] as? [[String: Any]] else {
            throw FeedError.stop("the root's status does not list its sources")
        }
        var out = [String: UInt64]()
        for s in sources {
            if let id = s["source_id"] as? String, let cp = (s["checkpoint"] as? NSNumber)?.uint64Value { out[id] = cp }
        }
        return out
    }

    /// Where a bridge resumes: its checkpoint (batched) or the root's head (compatible).
    public func position(sourceID: String, mode: WriteMode) async throws -> UInt64? {
        switch mode {
        case .batched: return try await checkpoint(sourceID: sourceID)
        case .compatible: return try await head().index
        }
    }

    public func close() async { await drop() }
}
