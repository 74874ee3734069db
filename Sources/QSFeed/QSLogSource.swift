import QSCaptures
import QSClient
import QSModel
import QSNet
import QSWire

/// A QS node's transaction log as a feed: subscribes after a log index (with the
/// source's own hash there) and delivers each entry as a change at its index, carrying
/// the entry itself for compatible-mode appends. Heartbeats carry the root's clock.
public struct QSLogSource: FeedSource {
    public let endpoint: Endpoint
    /// With `stopAtHead`, the source ends once it has delivered the head the node had when
    /// the subscription started (`--once`).
    public let stopAtHead: Bool
    /// The source node's replication token (its `--replication-token-file`); empty when it has none.
    public let token: [UInt8]
    public var name: String { "qs://\(endpoint)" }

    public init(endpoint: Endpoint, stopAtHead: Bool = false, token: [UInt8] = []) {
        self.endpoint = endpoint
        self.stopAtHead = stopAtHead
        self.token = token
    }

    struct Closed: Error, CustomStringConvertible {
        var description: String { "the source node closed the log stream" }
    }

    /// Ends the subscription once the head asked for (`stopAtHead`) is delivered.
    private struct ReachedHead: Error {}

    public func run(after position: UInt64, deliver: @escaping @Sendable (FeedEvent) async throws -> Void) async throws {
        let client: QSClient
        var subscription: LogSubscription
        switch endpoint {
        case let .tcp(host, port):
            client = try await QSClient.connect(host: host, port: port)
            subscription = LogSubscription(host: host, port: port)
        case let .unix(path):
            client = try await QSClient.connect(unixPath: path)
            subscription = LogSubscription(unixPath: path)
        }
        subscription.token = token
        var hash = Head.empty.hash
        let stopAt: UInt64?
        do {
            if position > 0 {
                guard let e = try await client.entries(from: position, count: 1).first, e.index == position else {
                    let first = try await client.entries(from: 1, count: 1).first?.index ?? 0
                    throw FeedError.stop("\(name) no longer retains entry \(position) (it keeps entries from \(first)): the target cannot resume from it; bootstrap the target from a snapshot of the source or raise the source's --log-retention")
                }
                hash = e.hash
            }
            stopAt = stopAtHead ? try await client.head().index : nil
        } catch {
            await client.close()
            throw error
        }
        await client.close()
        if let stopAt, stopAt <= position { return }
        let name = self.name
        do {
            try await subscription.stream(after: position, hash: hash) { _, response in
                switch response {
                case let .entries(list):
                    for e in list {
                        let entry: LogEntry
                        do { entry = try LogEntry.decode(e.bytes) } catch {
                            throw FeedError.corrupt("\(name): entry \(e.index) does not decode: \(error)")
                        }
                        try await deliver(.change(FeedChange(position: e.index, operations: entry.operations,
                                                             sourceTimeNs: entry.commitTimeNs, entry: e)))
                        if let stopAt, e.index >= stopAt { throw ReachedHead() }
                    }
                case let .heartbeat(_, rootTime):
                    try await deliver(.heartbeat(sourceTimeNs: rootTime))
                default:
                    throw FeedError.corrupt("\(name): unexpected frame on a log stream")
                }
            }
        } catch is ReachedHead {
            return
        } catch let failure as LogSubscription.Failure {
            switch failure {
            case let .refused(_, code, message):
                switch ErrorCode(rawValue: code) {
                case .diverged, .needsBootstrap, .behind:
                    throw FeedError.stop("\(name) refused the subscription: \(message)")
                case .unauthorized:
                    throw FeedError.stop("\(name) refused the subscription: \(message); give the bridge --source-token-file with the source's replication token")
                default:
                    throw ClientError.server(code: code, message: message)
                }
            case .unexpected:
                throw FeedError.corrupt("\(name): unexpected frame on a log stream")
            case .closed:
                throw Closed()
            }
        }
    }
}

/// A recorded QS log feed (`qsctl record --source qs://…`) as a feed source, so
/// `qsqsbridge --source capture:FILE` replays it like the live log. Damage (a cut or
/// corrupt frame) and a recording that starts too late stop the bridge, naming the
/// offset; every complete frame before it is applied.
public struct QSCaptureSource: FeedSource {
    public let entries: QSCaptureEntries
    public var name: String { entries.name }

    public init(path: String) {
        entries = QSCaptureEntries(path: path)
    }

    public func run(after position: UInt64, deliver: @escaping @Sendable (FeedEvent) async throws -> Void) async throws {
        do {
            try await entries.run(after: position) { event in
                switch event {
                case let .heartbeat(_, rootTimeNs):
                    try await deliver(.heartbeat(sourceTimeNs: rootTimeNs))
                case let .entries(list):
                    for e in list {
                        let entry: LogEntry
                        do { entry = try LogEntry.decode(e.bytes) } catch {
                            throw FeedError.stop("\(entries.name): entry \(e.index) does not decode: \(error)")
                        }
                        try await deliver(.change(FeedChange(position: e.index, operations: entry.operations,
                                                             sourceTimeNs: entry.commitTimeNs, entry: e)))
                    }
                }
            }
        } catch let error as FeedError {
            throw error
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            throw FeedError.stop("\(error)")
        }
    }
}
