import Metrics
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
    /// Whether each change carries its entry's operations (batched mode applies them);
    /// false for compatible mode, which appends the entries verbatim: see `LogEntryChange`.
    public let decodeOperations: Bool
    public var name: String { "qs://\(endpoint)" }
    /// A QS node heartbeats every second on a log subscription with nothing new.
    public var heartbeatInterval: Duration? { .seconds(1) }
    public var silenceTimeout: Duration? { .nanoseconds(LogSubscription.defaultReadTimeout.nanoseconds) }
    /// Entries refused as damaged: not continuing the source's hash chain, or not decoding.
    let corruptFrames: Counter

    public init(endpoint: Endpoint, stopAtHead: Bool = false, token: [UInt8] = [], decodeOperations: Bool = true) {
        self.endpoint = endpoint
        self.stopAtHead = stopAtHead
        self.token = token
        self.decodeOperations = decodeOperations
        corruptFrames = Counter(label: "qs_bridge_corrupt_frames_total")
    }


    /// A source that refuses the bridge's token (or its reads without one: a source on
    /// another machine) stops the bridge, saying which flag to give; other errors as they are.
    static func stopIfRefused(_ error: any Error, _ name: String) -> any Error {
        guard case let ClientError.server(code, message) = error, ErrorCode(rawValue: code) == .unauthorized else { return error }
        return FeedError.stop("\(name) refused the bridge's reads: \(message); give the bridge --source-token-file with the source's replication token (its --replication-token-file)")
    }

    struct Closed: Error, CustomStringConvertible {
        var description: String { "the source node closed the log stream" }
    }

    /// Ends the subscription once the head asked for (`stopAtHead`) is delivered.
    private struct ReachedHead: Error {}

    public func run(after position: UInt64, deliver: @escaping @Sendable (FeedEvent) async throws -> Void) async throws {
        let client: QSClient
        var subscription: LogSubscription
        do {
            switch endpoint {
            case let .tcp(host, port):
                // The replication token also lets this connection read from another machine.
                client = try await QSClient.connect(host: host, port: port, readToken: token)
                subscription = LogSubscription(host: host, port: port)
            case let .unix(path):
                client = try await QSClient.connect(unixPath: path)
                subscription = LogSubscription(unixPath: path)
            }
        } catch {
            throw Self.stopIfRefused(error, name)
        }
        subscription.token = token
        var hash = Head.empty.hash
        let stopAt: UInt64?
        do {
            if position > 0 {
                guard let e = try await client.entries(from: position, count: 1).first, e.index == position else {
                    let first = try await client.entries(from: 1, count: 1).first?.index ?? 0
                    let head = try await client.head().index
                    if position > head {
                        throw FeedError.stop("the target's position \(position) is past \(name)'s head \(head): the target holds entries the source never had (it took other writes, or mirrored another root), another history. Mirror into an empty root or one that mirrored this source")
                    }
                    throw FeedError.stop("\(name) no longer retains entry \(position) (it keeps entries from \(first)): the target cannot resume from it; bootstrap the target from a snapshot of the source or raise the source's --log-retention")
                }
                hash = e.hash
            }
            stopAt = stopAtHead ? try await client.head().index : nil
        } catch {
            await client.close()
            throw Self.stopIfRefused(error, name)
        }
        await client.close()
        if let stopAt, stopAt <= position { return }
        let name = self.name, decodeOperations = self.decodeOperations, corrupt = corruptFrames
        // Every entry must continue the source's hash chain from here (the subscription
        // checked it at the position): batched mode would apply one damaged on the way as it
        // came, compatible mode's target would refuse it as another history.
        var chain = ChainFollower(index: position, hash: hash)
        do {
            try await subscription.stream(after: position, hash: hash) { _, response in
                switch response {
                case let .entries(list):
                    // What continues the chain is delivered; the rest is fetched again.
                    let (continuing, broken) = chain.follow(list)
                    let reached = try await LogEntryChange.deliver(Array(list.prefix(continuing)), decodeOperations: decodeOperations,
                                                                   stopAt: stopAt, deliver) { e, error in
                        // Its bytes are the source's (they continue its chain): fetching it
                        // again gives the same entry, so the bridge stops, as a capture's does.
                        corrupt.increment()
                        return FeedError.stop("\(name): entry \(e.index) does not decode: \(error); its bytes are the source's own (they continue its hash chain), so it cannot be mirrored: check the source (qsnode check) and the versions of the two")
                    }
                    if reached { throw ReachedHead() }
                    if let broken {
                        corrupt.increment()
                        throw FeedError.corrupt("\(name): \(broken); not applied, fetched again from the checkpoint")
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
    /// As `QSLogSource.decodeOperations`.
    public let decodeOperations: Bool
    public var name: String { entries.name }

    public init(path: String, decodeOperations: Bool = true) {
        entries = QSCaptureEntries(path: path)
        self.decodeOperations = decodeOperations
    }

    public func run(after position: UInt64, deliver: @escaping @Sendable (FeedEvent) async throws -> Void) async throws {
        let decodeOperations = self.decodeOperations
        do {
            try await entries.run(after: position) { event in
                switch event {
                case let .heartbeat(_, rootTimeNs):
                    try await deliver(.heartbeat(sourceTimeNs: rootTimeNs))
                case let .entries(list):
                    _ = try await LogEntryChange.deliver(list, decodeOperations: decodeOperations, stopAt: nil, deliver) { e, error in
                        FeedError.stop("\(entries.name): entry \(e.index) does not decode: \(error)")
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

/// A QS log entry as a change at its index. With its operations decoded for batched mode;
/// for compatible mode, which appends the entry's bytes verbatim, only checked and
/// summarised (`LogEntry.summary`: commit time, operation count and bytes), which spares the
/// bridge building every key and value it would only forward (about half its work per
/// entry, docs/benchmarks.md). Either way an entry that does not decode is refused.
enum LogEntryChange {
    static func make(_ e: StoredEntry, decodeOperations: Bool) throws -> FeedChange {
        if decodeOperations {
            let entry = try LogEntry.decode(e.bytes)
            return FeedChange(position: e.index, operations: entry.operations, sourceTimeNs: entry.commitTimeNs, entry: e)
        }
        let summary = try LogEntry.summary(of: e.bytes)
        return FeedChange(position: e.index, operations: [], sourceTimeNs: summary.commitTimeNs, entry: e,
                          operationCount: summary.operations, operationBytes: summary.operationBytes)
    }

    /// Delivers a frame's entries as one event, through `stopAt` (the rest are left).
    /// An entry that does not decode is thrown as `refusal` makes it, after the entries
    /// before it are delivered. Returns whether `stopAt` was reached.
    static func deliver(_ list: [StoredEntry], decodeOperations: Bool, stopAt: UInt64?,
                        _ deliver: @Sendable (FeedEvent) async throws -> Void,
                        refusal: (StoredEntry, any Error) -> FeedError) async throws -> Bool {
        var changes = [FeedChange]()
        changes.reserveCapacity(list.count)
        for e in list {
            do {
                changes.append(try make(e, decodeOperations: decodeOperations))
            } catch {
                if !changes.isEmpty { try await deliver(.changes(changes)) }
                throw refusal(e, error)
            }
            if let stopAt, e.index >= stopAt {
                try await deliver(.changes(changes))
                return true
            }
        }
        if !changes.isEmpty { try await deliver(.changes(changes)) }
        return false
    }
}
