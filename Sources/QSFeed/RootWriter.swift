import Foundation
import Logging
import Metrics
import NIOConcurrencyHelpers
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
    /// Sends `request` without waiting for its answer: requests started one after another
    /// reach the root in that order and are answered in that order, so a writer can keep
    /// several batches in flight on one connection.
    func start(_ request: Request, timeout: TimeAmount) -> PendingAnswer
    func close() async
}

/// The answer a request sent with `RootConnection.start` will get (error answers
/// included); it may be awaited more than once.
public struct PendingAnswer: Sendable {
    public let wait: @Sendable () async throws -> Response

    public init(wait: @escaping @Sendable () async throws -> Response) {
        self.wait = wait
    }
}

extension QSClient: RootConnection {
    public func send(_ request: Request, timeout: TimeAmount) async throws -> Response {
        try await send(request, timeout: Optional(timeout))
    }

    public func head() async throws -> Head { try await head(timeout: nil) }

    public func start(_ request: Request, timeout: TimeAmount) -> PendingAnswer {
        let answer: EventLoopFuture<Frame> = start(request, timeout: timeout)
        return PendingAnswer { try await QSClient.response(answer) }
    }
}

/// Whether a write was handed to the root (see `RootWriter.writes(sending:)`).
public enum SendState: Sendable, Equatable {
    case notSent, sent, abandoned
}

/// A root's answer that retrying the same request cannot change (`frame-too-large`):
/// the caller sends something else (a smaller batch) or stops.
public struct RootRefusal: Error, Sendable, CustomStringConvertible {
    public let code: ErrorCode
    public let message: String

    public var description: String { "root refused: \(code): \(message)" }
}

/// The bridge's side of the root: one connection, re-made with capped backoff whenever
/// it fails, for as long as the task is not cancelled.
///
/// The root may be given as several addresses (`--root A,B,C`: the members of a root
/// cluster, or a legacy root and the root it is cut over to). One is in use at a time;
/// when its connection fails, a call to it fails, it says it takes no writes
/// (`not-writable`, or a cluster member that is not following the cluster's log), or it
/// is stale (its head stands still while another address's has gone past it), the writer
/// moves to the next address that answers (`qs_bridge_root_failovers_total`, a log line
/// naming both addresses and the reason), provided that address holds every source id this
/// writer wrote at least where the root it leaves was known to (`check(continuity:)`): an
/// empty root listed before it mirrors the other, or one of another history, is passed
/// over, so no acknowledged write lands where the fleet's root never sees it. A compatible
/// mirror is passed over at connection (`check(mirror:)`). A writer that has seen no
/// position of its source id yet (started while its first address is down or is a mirror)
/// takes another address only if it shows it carries the history (`check(carries:)`: a
/// checkpoint of the source id, promoted, a cluster member, the head of a mirror passed
/// over, or the root an empty mirror passed over follows). A call whose answer was lost is sent
/// again to the next address: compare-and-swap on the source's position resolves it (a
/// batch already committed answers `conflict(current: new)`), so nothing is applied twice.
///
/// Every new connection starts with `hello`, so a wrong write token (or a root that is a
/// replica) stops the bridge at start-up rather than at its first write; while nothing is
/// written, `keepalive()` asks the root for its head so a dead or unreachable root is
/// noticed within seconds even when the source is idle (`link`, `qs_bridge_root_connected`).
public actor RootWriter {
    /// Every root address, in order of preference.
    public nonisolated let endpoints: [Endpoint]
    let token: [UInt8]
    let logger: Logger
    let metrics: RootLinkMetrics
    let connect: @Sendable (Endpoint) async throws -> any RootConnection
    /// What the bridge says it is in its hello (shown in the root's status).
    let greeting: String
    /// Where the token came from, for the refusal message (e.g. `--write-token-file /etc/qs/token`).
    let tokenOrigin: String
    private var current: (any RootConnection)?
    /// Counts the connections made, so the failure of a call sent on an older one does not
    /// close a newer one.
    var generation = 0
    /// Why this writer dropped the connection of that generation: a call whose answer was
    /// lost with it reports this reason, not "the node closed the connection" (a keepalive
    /// that gave up on a silent root closed it, not the root).
    private var droppedGeneration: (generation: Int, why: String)?
    private var connecting: Task<Connected, any Error>?
    private var inFlight = 0
    private var lastAnswer = ContinuousClock.now
    /// When the keepalive last asked the root's write role (`roleCheckInterval`).
    private var roleChecked = ContinuousClock.now
    /// How often an idle writer of its own (a source id: qsrest, the bridges in batched
    /// mode) asks whether its root still takes writes.
    static let roleCheckInterval: Duration = .seconds(5)
    /// The address in use (or tried first at the next connection).
    private var position = 0
    /// The address of the last connection made (nil before the first).
    private var lastUsed: Int?
    /// Why the address in use was left, for the failover's log line.
    private var leaving: String?
    /// The newest position of each source id a root this writer used was known to hold
    /// (`confirm`): an address it moves to that holds less is not a copy of that root.
    private var confirmed: [String: UInt64] = [:]
    /// Counts the changes to `confirmed`: an attempt checks against the map as it was when
    /// it started, so one that raised meanwhile (an answer on the old connection processed
    /// while the attempt ran) makes its choice of a new address void (`connection()`).
    private var confirmedVersion = 0
    /// The `confirmedVersion` the attempt in `connecting` checks against.
    private var connectingVersion = 0
    /// The source id this writer writes under (nil: a compatible mirror's appends, which
    /// the chained hashes check): an address it moves to before it has seen a position of
    /// it must show it carries this writer's history (`check(carries:)`).
    let sourceID: String?
    /// The source descriptor this writer records at its root (`record(descriptor:)`), nil
    /// when it records none (qsrest, compatible mirrors).
    var descriptor: Descriptor?
    /// The connection (by generation) on which the descriptor is still to be recorded
    /// before the first write: the root holds none for the source, or another one to replace.
    var descriptorDue: (generation: Int, previous: String?)?
    /// Addresses already said not to record descriptors (warned once each).
    var descriptorUnrecordedWarned = Set<String>()
    /// Whether this process has recorded its descriptor at a root.
    var descriptorRecordedHere = false
    /// The head of the address in use, and since when it has stood still.
    private var headSeen: (index: UInt64, since: ContinuousClock.Instant)?
    private let inUse: [Gauge]
    private let passedOverLog = RateLimitedLog(window: .seconds(30), byHost: false)
    /// See `RootWriter.staleAfter`.
    let staleAfter: Duration
    /// Refusals a call met once and did not believe yet (`doubtedOnce`): cleared by the
    /// next call that succeeds (a keepalive does not count).
    private var doubted = Set<UInt16>()
    /// Refusals a node makes of a write from bytes it judges before any checksum can be
    /// (the frame's header, a large write's type and token: docs/protocol.md, "Checked
    /// frames"): one damaged on the way is refused as one of these. The first is not
    /// believed: the call goes again on a new connection, and only the same refusal again
    /// stops the writer (or, too large, makes it send less). A change refused "too large"
    /// was skipped with --on-oversized skip, a wrong token stopped the bridge.
    static let doubtedOnce: Set<ErrorCode> = [.unauthorized, .invalidRequest, .unsupported, .malformed, .frameTooLarge]
    /// Whether each address takes checked frames, as its last probe found (`WriteChecking`).
    nonisolated let checking: WriteChecking
    /// Node errors thrown to the caller as `RootRefusal` instead of retried: a bridge waits
    /// out a root that is out of room (nothing is lost, the feed waits), while qsrest,
    /// whose producers wait with open requests, answers them instead (`storage-full`,
    /// `disk-full`: nothing was written).
    let unretried: Set<ErrorCode>
    /// Whether the root is connected, and the last failure: readable without waiting on
    /// the actor (by `/readyz` and the scrape).
    public nonisolated let link: NIOLockedValueBox<Link>

    public struct Link: Sendable {
        public var connected = false
        public var lastError: String?
        /// Since when a call has been waiting for the root's answer (nil: none waits).
        public var waitingSince: ContinuousClock.Instant?
        /// The last call that failed and is being retried, and when (kept after the
        /// connection is made again: a root out of room answers every retry the same way,
        /// and its keepalives succeed); cleared when a call succeeds.
        public var lastCallFailure: (at: ContinuousClock.Instant, why: String)?
        /// Whether that failure was the node's answer (an error response: out of room, not
        /// writable), which a keepalive's answer does not cure, rather than the connection's.
        public var lastCallFailureByNode = false
        /// Whether that refusal was `not-writable` (a root demoted, a mirror): the keepalive
        /// asks the node's write role, so a root promoted again clears it without a write
        /// (behind a readiness-gated balancer none would come).
        public var lastCallFailureNotWritable = false
        /// When the root last answered anything (a keepalive included).
        public var lastAnswerAt: ContinuousClock.Instant?
        /// When the connection in use was made (nil: none yet).
        public var connectedAt: ContinuousClock.Instant?
        /// Why the root no longer holds a position it confirmed to this writer (its
        /// checkpoint for the writer's source id went back: restored from a backup, wiped,
        /// another root at the address), as the idle check found it; nil while it holds.
        public var positionLost: String?
        /// The address in use, or the one tried first at the next connection.
        public var root: Endpoint

        public init(root: Endpoint) { self.root = root }

        /// Why the root, connected, is not answering as of `now`: a call has waited longer
        /// than `patience` (a root that accepts connections but hangs mid-batch, or is
        /// overloaded; the call itself waits for its own timeout). nil when it answers.
        public func stall(now: ContinuousClock.Instant = .now, patience: Duration = RootWriter.patience) -> String? {
            guard connected, let since = waitingSince, now - since > patience else { return nil }
            return "a call has waited \(Int((now - since).seconds)) s for its answer (hung or overloaded)"
        }
    }

    private struct Connected: Sendable {
        let index: Int
        let connection: any RootConnection
        /// Why the addresses tried before it were passed over.
        let passedOver: [String]
        /// What the root holds of this writer's descriptor (nil: it records none).
        var descriptor: DescriptorAtRoot?
    }

    /// How long a write call (batch, append, writes) waits for its answer before the
    /// connection is given up and re-made: a connection gone half-open (the root never got
    /// the call, or its answer never came) would otherwise hold the bridge. The call is then
    /// sent again; compare-and-swap on the position makes that harmless (a batch the root
    /// did apply answers `conflict` at its own position). A sound root applies the largest
    /// batch in well under a second.
    public static let callTimeout: TimeAmount = .seconds(15)
    /// Error answers a node gives before it does anything with a write: a try answered so
    /// applied nothing. Any other answer (a root cluster's storage-error may follow a commit
    /// in etcd), like no answer, may have been applied.
    static let refusedBeforeAnything: Set<ErrorCode> = [.malformed, .frameTooLarge, .unauthorized, .invalidRequest, .unsupported,
                                                       .notWritable, .storageFull, .diskFull, .damaged]

    /// How long a call may wait for the root before the root counts as not answering.
    public static let patience: Duration = .seconds(4)

    /// How long the head of the address in use may stand still while another address's
    /// is ahead of it before the writer leaves it as stale (several addresses only): the
    /// default of `--root-stale-after`.
    public static let staleAfter: Duration = .seconds(5)

    public nonisolated var connected: Bool { link.withLockedValue { $0.connected } }

    /// The address in use (or tried first at the next connection).
    public nonisolated var endpoint: Endpoint { link.withLockedValue { $0.root } }

    /// A writer to the root at `endpoints` (several: failover in that order), over `QSClient`.
    public init(endpoints: [Endpoint], token: [UInt8], logger: Logger, metrics: RootLinkMetrics,
                client: String = "bridge", tokenOrigin: String = "the write token", staleAfter: Duration = RootWriter.staleAfter,
                unretried: Set<ErrorCode> = [], sourceID: String? = nil) {
        let checking = WriteChecking()
        self.init(endpoints: endpoints, token: token, logger: logger, metrics: metrics, client: client, tokenOrigin: tokenOrigin,
                  staleAfter: staleAfter, unretried: unretried, sourceID: sourceID, checking: checking) { endpoint in
            // Writes go checked (`CheckedFrames`) to a node that knows the envelope; an
            // address is probed once in a while, not at every connection (a node older than
            // the envelope counts each probe as a bad frame).
            let mode = checking.mode(for: endpoint)
            let c: QSClient
            switch endpoint {
            // The write token opens the connection's reads (the checks read other listed
            // roots without a hello); a node that refuses it is told so by the hello.
            case let .tcp(host, port): c = try await QSClient.connect(host: host, port: port, token: token, refusalThrows: false, writeChecking: mode)
            case let .unix(path): c = try await QSClient.connect(unixPath: path, token: token, writeChecking: mode)
            }
            if mode == .probe { checking.note(endpoint, checked: c.checksWrites) }
            return c
        }
    }

    /// A writer whose connections to each address come from `connect`.
    public init(endpoints: [Endpoint], token: [UInt8], logger: Logger, metrics: RootLinkMetrics,
                client: String = "bridge", tokenOrigin: String = "the write token", staleAfter: Duration = RootWriter.staleAfter,
                unretried: Set<ErrorCode> = [], sourceID: String? = nil, checking: WriteChecking = WriteChecking(),
                connect: @escaping @Sendable (Endpoint) async throws -> any RootConnection) {
        precondition(!endpoints.isEmpty, "a root writer needs at least one address")
        self.checking = checking
        self.unretried = unretried
        self.sourceID = sourceID
        self.endpoints = endpoints
        self.token = token
        self.logger = logger
        self.metrics = metrics
        self.greeting = client
        self.tokenOrigin = tokenOrigin
        self.connect = connect
        self.staleAfter = staleAfter
        link = NIOLockedValueBox(Link(root: endpoints[0]))
        inUse = endpoints.map { metrics.rootInUse(address: $0.description) }
        metrics.rootConnected.record(0)
        for g in inUse { g.record(0) }
    }

    /// The connection, made (and introduced with hello) if there is none; concurrent
    /// callers share one attempt. The attempt tries every address once, from the one in
    /// use, and takes the first that accepts the hello.
    private func connection() async throws -> any RootConnection {
        if let current { return current }
        let attempt: Task<Connected, any Error>, version: Int
        if let connecting {
            (attempt, version) = (connecting, connectingVersion)
        } else {
            let connect = self.connect, hello = Request.hello(token: token, client: greeting)
            let endpoints = self.endpoints, start = position, tokenOrigin = self.tokenOrigin, token = self.token
            let confirmed = self.confirmed, lastUsed = self.lastUsed, sourceID = self.sourceID, descriptor = self.descriptor
            attempt = Task {
                var passedOver = [String]()
                var last: (any Error)?
                // The first address passed over that answered but takes no writes (a
                // mirror, a demoted root), with its head: a root whose log holds that head
                // carries the history it mirrors.
                var anchor: (endpoint: Endpoint, head: Head)?
                // The roots the mirrors passed over follow (their live mirror bridges' sources).
                var mirrored = [Endpoint]()
                for step in 0..<endpoints.count {
                    let i = (start + step) % endpoints.count, endpoint = endpoints[i]
                    do {
                        let c = try await connect(endpoint)
                        var introduced = false
                        var held: DescriptorAtRoot?
                        do {
                            try Self.check(hello: try await c.send(hello, timeout: .seconds(10)), endpoint: endpoint,
                                           tokenOrigin: tokenOrigin, alternatives: endpoints.count > 1)
                            // A compatible mirror says hello to its mirror bridge and refuses
                            // every other write: a writer of its own passes it over now (with
                            // its head as the anchor) rather than at its first write.
                            // Its Status, read once for this check and the carries check below.
                            var status: [String: Any]?
                            if sourceID != nil { status = try await Self.check(mirror: c, following: &mirrored) }
                            // Another mapping than the one the root recorded for this source
                            // id stops the writer here, before it writes anything.
                            if let descriptor, let sourceID {
                                held = try Self.check(descriptor: descriptor, sourceID: sourceID, status: status, endpoint: endpoint)
                                if held == .ask { held = try await ask(descriptor: descriptor, sourceID: sourceID, on: c, endpoint: endpoint) }
                            }
                            introduced = true
                            // At start, before any address was written to: one that holds no
                            // checkpoint of this source while another listed address does is not
                            // the root this source writes to (an empty root listed first, a new
                            // root not yet mirroring): the whole source would go into it.
                            if lastUsed == nil, endpoints.count > 1, let sourceID, confirmed[sourceID] == nil,
                               try await c.checkpoint(sourceID: sourceID) == nil {
                                try await Self.check(noneElsewhere: sourceID, at: endpoint, among: endpoints, connect: connect)
                            }
                            if let lastUsed, lastUsed != i {
                                let from = endpoints[lastUsed]
                                // The address left, when this attempt did not try it first: a
                                // root that takes no writes now (demoted) has a final head.
                                var left = anchor?.endpoint == from ? anchor : nil
                                if left == nil, let previous = try? await connect(from) {
                                    if let s = try? await Self.status(of: previous), NodeStatus.isMirror(s),
                                       let head = try? await previous.head(), head.index > 0 {
                                        left = (from, head)
                                    }
                                    await previous.close()
                                }
                                try await Self.check(continuity: c, endpoint: endpoint, from: from, confirmed: confirmed,
                                                     anchor: left, token: token)
                            }
                            // Moving off an address before any position of this writer's
                            // source id was seen (a process started while its first address
                            // is down, or a new source id): nothing to compare with, so the
                            // address must show it carries the history.
                            if i != (lastUsed ?? 0), let sourceID, confirmed[sourceID] == nil {
                                let from = endpoints[lastUsed ?? 0]
                                // The address left may answer (a mirror refusing the writes, a
                                // stale root): its head is then what the next must hold.
                                var fromEmpty = false, fromRefuses = false
                                if anchor == nil, let previous = try? await connect(from) {
                                    do {
                                        let head = try await previous.head()
                                        if head.index > 0 { anchor = (from, head) } else { fromEmpty = true }
                                    } catch let ClientError.server(code, _) where code == ErrorCode.unauthorized.rawValue {
                                        // It refuses this writer's token: never a root it writes to.
                                        fromRefuses = true
                                    } catch {}
                                    await previous.close()
                                }
                                if !fromRefuses {
                                    try await Self.check(carries: c, status: status, endpoint: endpoint, from: from, sourceID: sourceID,
                                                         anchor: anchor, mirrored: mirrored, fromEmpty: fromEmpty)
                                }
                            }
                        } catch {
                            if !introduced, anchor == nil, case let ClientError.server(code, _) = error,
                               code == ErrorCode.notWritable.rawValue, let head = try? await c.head(), head.index > 0 {
                                anchor = (endpoint, head)
                            }
                            await c.close()
                            throw error
                        }
                        return Connected(index: i, connection: c, passedOver: passedOver, descriptor: held)
                    } catch let error as FeedError {
                        throw error
                    } catch {
                        passedOver.append("\(endpoint): \(error)")
                        last = error
                    }
                }
                if endpoints.count == 1, let last { throw last }
                throw ClientError.connectionFailed("no root address takes this writer's writes: " + passedOver.joined(separator: "; "))
            }
            connecting = attempt
            (connectingVersion, version) = (confirmedVersion, confirmedVersion)
        }
        let made: Connected
        do {
            made = try await attempt.valueUnlessCancelled()
        } catch is CancellationError where Task.isCancelled {
            // This caller stops waiting (the process stopping, a write given up at its
            // deadline): the attempt runs on, finished by a task of its own that takes its
            // connection (the keepalive skips while an attempt runs, so nothing else would,
            // and /readyz said "not connected" until a write came).
            Task { _ = try? await self.connection() }
            throw CancellationError()
        } catch {
            if connecting == attempt { connecting = nil }
            throw error
        }
        if connecting == attempt { connecting = nil }
        if let current { return current }
        // A position confirmed while the attempt ran (an answer on the old connection) was
        // not in the map its checks used: a new address is checked again against it. Every
        // caller sharing the attempt comes here; each closes the connection (idempotent)
        // and joins the one new attempt.
        if let lastUsed, lastUsed != made.index, version != confirmedVersion {
            let stale = made.connection
            Task { await stale.close() }
            if connecting == attempt { connecting = nil }
            logger.debug("root address chosen against positions since confirmed: checking again",
                         metadata: ["to": "\(endpoints[made.index])"])
            return try await connection()
        }
        current = made.connection
        generation += 1
        let to = endpoints[made.index]
        if let previous = lastUsed, previous != made.index {
            let why = ([leaving].compactMap { $0 } + made.passedOver).joined(separator: "; ")
            metrics.failovers.increment()
            logger.notice("root failover: moved to another root address",
                          metadata: ["from": "\(endpoints[previous])", "to": "\(to)", "reason": "\(why)"])
        } else if !made.passedOver.isEmpty {
            passedOverLog.warning(logger, "root addresses passed over", peer: "\(to)",
                                  metadata: ["to": "\(to)", "passed-over": "\(made.passedOver.joined(separator: "; "))"])
        }
        leaving = nil
        position = made.index
        lastUsed = made.index
        headSeen = nil
        noteDescriptor(made.descriptor, at: to)
        link.withLockedValue { $0.root = to }
        for (i, g) in inUse.enumerated() { g.record(i == position ? 1 : 0) }
        setLink(connected: true, error: nil)
        logger.info("connected to root", metadata: ["root": "\(to)"])
        return made.connection
    }

    private func setLink(connected: Bool, error: String?) {
        link.withLockedValue {
            if connected && !$0.connected { $0.connectedAt = .now }
            $0.connected = connected
            if let error { $0.lastError = error } else if connected { $0.lastError = nil }
            if !connected { $0.waitingSince = nil }
        }
        metrics.rootConnected.record(connected ? 1 : 0)
    }

    /// A call was sent: the root owes an answer from now (unless it already owed one).
    private func startWaiting() {
        link.withLockedValue { if $0.waitingSince == nil { $0.waitingSince = .now } }
    }

    /// The root answered: it owes nothing more, or, with other calls in flight, from now.
    private func answered() {
        lastAnswer = .now
        let others = inFlight > 1
        link.withLockedValue {
            $0.waitingSince = others ? .now : nil
            $0.lastAnswerAt = .now
        }
    }

    /// Closes the connection after a failure. With several addresses, the next connection
    /// starts at the next one (`to`, when known: a fresher address), so a root that
    /// accepts connections but fails its calls is not tried first again.
    private func drop(_ why: String, moveTo: Int? = nil, byNode: Bool = false) async {
        if let current {
            metrics.reconnects.increment()
            metrics.rootReconnects.increment()
            droppedGeneration = byNode ? nil : (generation, why)
            await current.close()
            if endpoints.count > 1 {
                leaving = why
                position = moveTo ?? (position + 1) % endpoints.count
                link.withLockedValue { $0.root = endpoints[position] }
            }
        }
        current = nil
        setLink(connected: false, error: why)
    }

    /// Whether the address in use is stale: its head (`index`) has stood still for
    /// `staleAfter` while another address's head is past it. Returns that address's
    /// position and the reason; asks the others only once the head has stood still.
    private func stale(head index: UInt64) async -> (Int, String)? {
        guard endpoints.count > 1 else { return nil }
        let now = ContinuousClock.now
        guard let seen = headSeen, seen.index == index else {
            headSeen = (index, now)
            return nil
        }
        guard now - seen.since >= staleAfter else { return nil }
        let connect = self.connect, endpoints = self.endpoints, position = self.position
        for step in 1..<endpoints.count {
            let i = (position + step) % endpoints.count
            guard let other = try? await connect(endpoints[i]) else { continue }
            let theirs = try? await other.head()
            await other.close()
            if let theirs, theirs.index > index {
                return (i, "stale: its head stood at \(index) for \(Int((now - seen.since).seconds)) s while \(endpoints[i]) is at \(theirs.index)")
            }
        }
        headSeen = (index, now)
        return nil
    }

    /// Checks the root when nothing was asked of it for `idle`: asks for its head (or
    /// connects, when there is no connection), waiting at most `timeout`. A failure drops
    /// the connection and marks the root disconnected; the next keepalive or call tries
    /// again. Calls in flight check the root themselves, so nothing is sent beside them.
    public func keepalive(idle: Duration = .seconds(1), timeout: Duration = .seconds(2)) async {
        guard inFlight == 0, connecting == nil, ContinuousClock.now - lastAnswer >= idle else { return }
        inFlight += 1
        defer { inFlight -= 1 }
        do {
            let c = try await connection()
            startWaiting()
            let r = try await c.send(.head, timeout: .nanoseconds(Int64(timeout.seconds * 1e9)))
            guard case let .head(head) = r else { throw ClientError.unexpected("\(r)") }
            answered()
            // The root answers again: a call that failed for the connection's sake (a hang,
            // a restart) is cured; one the node refused is not, until a call succeeds.
            let notWritable = link.withLockedValue { link -> Bool in
                if !link.lastCallFailureByNode { link.lastCallFailure = nil }
                return link.lastCallFailure != nil && link.lastCallFailureNotWritable
            }
            if notWritable, let s = try? await Self.status(of: c), s["role"] as? String == "root", !NodeStatus.isMirror(s) {
                // Promoted again (or the address now names a writable root): the refusal
                // no longer stands.
                link.withLockedValue {
                    $0.lastCallFailure = nil
                    $0.lastCallFailureNotWritable = false
                }
            }
            // An idle writer learned of a demotion only at its next write: qsrest with no
            // producer writing said ready for a root that took no writes. A writer of its own
            // asks the root's write role now and then, and leaves a root that takes none
            // (the next connection passes it over, or fails saying why: not connected).
            // A compatible mirror's own writer (no source id) writes to a mirror by design.
            if let sourceID, ContinuousClock.now - roleChecked >= Self.roleCheckInterval {
                roleChecked = .now
                if let s = try? await Self.status(of: c), s["role"] as? String != "root" || NodeStatus.isMirror(s) {
                    let what = NodeStatus.isMirror(s) ? "a compatible mirror (demoted, or mirroring another root)" : "not a root"
                    let why = "the root at \(endpoint) takes no writes now: it is \(what)"
                    logger.warning("root takes no writes", metadata: ["root": "\(endpoint)", "reason": "\(why)"])
                    await drop(why)
                    return
                }
                // And that it still holds what it confirmed (read before its checkpoint: a
                // write confirmed meanwhile only moves both on). An idle qsrest said ready
                // for a root wiped or restored from a backup until its next write.
                // (No checkpoint at all is position 0: a wiped root.)
                // A failed read says nothing (not `try?`: its nil would read as "none").
                var read: (answered: Bool, position: UInt64?) = (false, nil)
                if confirmed[sourceID] != nil {
                    do { read = (true, try await c.checkpoint(sourceID: sourceID)) } catch {}
                }
                if let held = confirmed[sourceID], read.answered, let answer = Optional(read.position), answer ?? 0 < held {
                    let why = "the root at \(endpoint) has lost writes it confirmed: its checkpoint for \(sourceID) is at \(answer ?? 0), before \(held), which it confirmed to this writer (a store restored from a backup or wiped, or another root at this address)"
                    if link.withLockedValue({ $0.positionLost }) == nil {
                        logger.critical("the root's checkpoint for this source went back", metadata: ["root": "\(endpoint)", "reason": "\(why)"])
                    }
                    link.withLockedValue { $0.positionLost = why }
                }
            }
            if let (fresher, why) = await stale(head: head.index), current != nil {
                logger.warning("root stale", metadata: ["root": "\(endpoint)", "reason": "\(why)"])
                await drop(why, moveTo: fresher)
            }
        } catch is CancellationError {
        } catch let error as FeedError {
            // A refused hello: the next call stops the bridge with it.
            await drop("\(error)")
        } catch {
            if connected { logger.warning("root not answering", metadata: ["root": "\(endpoint)", "error": "\(error)"]) }
            await drop("\(error)")
        }
    }

    /// Runs `call` against the root, retrying on connection failures with backoff. Node
    /// errors that retrying cannot cure (unauthorized, invalid request) stop the bridge.
    /// `refusedAtOnce`: a single root address that takes no writes (demoted, a compatible
    /// mirror) fails the call with `FeedError.stop` rather than retrying it, at connection
    /// and in the call alike: qsrest answers its batch 503 at once, "nothing was
    /// acknowledged", and tries the next. Not after a try that may have been applied (its
    /// answer lost): that one is retried, and its caller's deadline says "outcome unknown".
    public func perform<T: Sendable>(_ what: String, refusedAtOnce: Bool = false, writes: Bool = false,
                                     _ call: @Sendable (any RootConnection) async throws -> T) async throws -> T {
        var backoff = Backoff()
        // A try whose call went out and got no node answer (a lost answer, a timeout) may
        // have been applied: a refusal after it is not "nothing applied", so it is retried.
        var maybeApplied = false
        while true {
            try Task.checkCancellation()
            var on: Int?
            do {
                inFlight += 1
                defer { inFlight -= 1 }
                let c = try await connection()
                on = generation
                if writes { try await recordDescriptorIfDue(on: c) }
                startWaiting()
                let answer = try await call(c)
                answered()
                doubted.removeAll()
                link.withLockedValue { $0.lastCallFailure = nil }
                return answer
            } catch {
                var error = error, refusedByNode = false
                if refusedAtOnce, !maybeApplied, endpoints.count == 1, case let ClientError.server(code, message) = error,
                   ErrorCode(rawValue: code) == .notWritable {
                    let why = message.hasPrefix("takes no writes: ") ? String(message.dropFirst(17)) : message
                    error = FeedError.stop("the root at \(endpoints[0]) takes no writes: \(why); point --root at the writable root")
                    // Still the node's refusal: it stands until a call succeeds (a keepalive
                    // the demoted root answers does not cure it, and /readyz says so).
                    refusedByNode = true
                }
                if on != nil, !(error is FeedError) {
                    if case let .server(code, _) = error as? ClientError,
                       let known = ErrorCode(rawValue: code), Self.refusedBeforeAnything.contains(known) {} else { maybeApplied = true }
                }
                try await failed(what, error, generation: on, refusedByNode: refusedByNode)
            }
            try await Task.sleep(for: backoff.next())
        }
    }

    /// What a failed call means. Throws what retrying cannot cure: `FeedError.stop` (a node
    /// error such as unauthorized or an invalid request), `RootRefusal` (frame-too-large: the
    /// caller sends less), cancellation (`refusedByNode`: a stop made of the node's refusal,
    /// kept as one until a call succeeds). Anything else is counted and logged, and the
    /// connection is dropped (`generation`: the connection the call went on; nil, the
    /// current one) so the next call makes a new one. Returns the error as reported: a call
    /// whose answer was lost with a connection this writer closed names why it was closed.
    @discardableResult
    private func failed(_ what: String, _ error: any Error, generation: Int? = nil, refusedByNode: Bool = false) async throws -> any Error {
        let mine = generation.map { $0 == self.generation } ?? true
        var error = error
        let closedByNode = error as? ClientError == .connectionClosed
        // Only for a call known to have gone on that connection: a new connection's hello
        // closed by the node is the node's doing.
        if closedByNode, let generation, let dropped = droppedGeneration, dropped.generation == generation {
            error = ClientError.connectionFailed("closed here because \(dropped.why)")
        }
        if !(error is CancellationError) {
            var byNode = refusedByNode, notWritable = refusedByNode
            if case let .server(code, _) = error as? ClientError {
                byNode = true
                notWritable = ErrorCode(rawValue: code) == .notWritable
            }
            link.withLockedValue {
                $0.lastCallFailure = (.now, "\(error)")
                $0.lastCallFailureByNode = byNode
                $0.lastCallFailureNotWritable = notWritable
            }
        }
        if case let .server(code, message)? = error as? ClientError, let known = ErrorCode(rawValue: code) {
            if message.contains(CheckedFrames.unknownToNode) {
                // A node older than the envelope at this address now (a downgrade): probed
                // again at the next connection, which then writes plain frames.
                checking.forget(endpoint)
            }
            if Self.doubtedOnce.contains(known), !doubted.contains(code) {
                doubted.insert(code)
                metrics.rootErrors.increment()
                logger.warning("root refused a call; sending it again on a new connection before believing it (damaged on the way?)",
                               metadata: ["call": "\(what)", "error": "\(error)", "root": "\(endpoint)"])
                if mine { await drop("\(error)") }
                return error
            }
        }
        switch error {
        case let error as ClientError:
            if case let .server(code, message) = error {
                switch ErrorCode(rawValue: code) {
                case .unauthorized, .invalidRequest, .unsupported, .malformed:
                    throw FeedError.stop("root refused \(what): \(message)")
                case .frameTooLarge:
                    // The same request would be refused again: the caller sends less.
                    if mine { await drop("\(error)") }
                    throw RootRefusal(code: .frameTooLarge, message: message)
                case let code? where unretried.contains(code):
                    metrics.rootErrors.increment()
                    throw RootRefusal(code: code, message: message)
                default: break
                }
            }
            metrics.rootErrors.increment()
            logger.warning("root call failed, retrying", metadata: ["call": "\(what)", "error": "\(error)", "root": "\(endpoint)"])
        case is CancellationError:
            // A call given up while the root owed an answer longer than `patience` (qsrest's
            // commit deadline cancels its write before the call's own timeout): the
            // connection is dropped as a timeout would have dropped it, so the next call
            // connects again and can move to another address.
            if mine, let stall = link.withLockedValue({ $0.stall() }) { await drop(stall) }
            throw CancellationError()
        case let error as FeedError:
            throw error
        default:
            metrics.rootErrors.increment()
            logger.warning("root unreachable, retrying", metadata: ["call": "\(what)", "error": "\(error)", "root": "\(endpoint)"])
        }
        if mine { await drop("\(error)", byNode: closedByNode) }
        return error
    }

    /// A write sent without waiting for its answer (`send(_:_:)`), on the connection it went on.
    public struct Sent: Sendable {
        let what: String
        let answer: PendingAnswer
        let generation: Int
        let request: Request
    }

    /// Sends a batch or an append without waiting for its answer, connecting first (with
    /// backoff, for as long as the task is not cancelled) if there is no connection.
    /// Writes sent one after another reach the root in that order. Every `Sent` must be
    /// passed to `answer(_:)` once.
    public func send(_ what: String, _ request: Request) async throws -> Sent {
        var backoff = Backoff()
        while true {
            try Task.checkCancellation()
            do {
                let c = try await connection()
                try await recordDescriptorIfDue(on: c)
                inFlight += 1
                startWaiting()
                return Sent(what: what, answer: c.start(request, timeout: Self.callTimeout), generation: generation, request: request)
            } catch {
                try await failed(what, error)
            }
            try await Task.sleep(for: backoff.next())
        }
    }

    /// The answer to a write `send(_:_:)` sent: `applied` or `conflict`. Throws what
    /// `failed` throws, and, for an answer lost with its connection (or an error answer
    /// retrying may cure), the error itself after dropping that connection: the write's
    /// outcome is then unknown, and compare-and-swap on the position resolves it when the
    /// caller sends again.
    public func answer(_ sent: Sent) async throws -> Response {
        defer { inFlight -= 1 }
        do {
            let r = try Self.writeAnswer(try await sent.answer.wait())
            confirm(sent.request, r)
            answered()
            doubted.removeAll()
            link.withLockedValue { $0.lastCallFailure = nil }
            return r
        } catch {
            throw try await failed(sent.what, error, generation: sent.generation)
        }
    }

    /// A write's answer: `applied` and `conflict` returned, error answers thrown
    /// (`diverged` stops the bridge: the target has another history).
    static func writeAnswer(_ r: Response) throws -> Response {
        switch r {
        case .applied, .conflict: return r
        case let .error(code, message):
            if ErrorCode(rawValue: code) == .diverged {
                throw FeedError.stop("the target root has another history than the source: \(message) (it took other writes, or mirrored another root). Mirror into an empty root or one that mirrored this source (qsctl rebootstrap, or a new data directory)")
            }
            throw ClientError.server(code: code, message: message)
        default: throw ClientError.unexpected("\(r)")
        }
    }

    public func checkpoint(sourceID: String, refusedAtOnce: Bool = false) async throws -> UInt64? {
        let position = try await perform("get-checkpoint", refusedAtOnce: refusedAtOnce) { try await $0.checkpoint(sourceID: sourceID) }
        confirm(sourceID, position)
        return position
    }

    /// Notes a position the root in use holds for a source id (a write applied, a conflict's
    /// current position, a checkpoint read): a root this writer moves to must hold as much.
    private func confirm(_ sourceID: String, _ position: UInt64?) {
        guard let position, position > confirmed[sourceID] ?? 0 else { return }
        confirmed[sourceID] = position
        confirmedVersion += 1
    }

    private func confirm(_ request: Request, _ response: Response) {
        let sourceID: String, new: UInt64
        switch request {
        case let .batch(b): (sourceID, new) = (b.sourceID, b.new)
        case let .writes(w): (sourceID, new) = (w.sourceID, w.new)
        default: return
        }
        switch response {
        case .applied, .written: confirm(sourceID, new)
        case let .conflict(current): confirm(sourceID, current)
        default: break
        }
    }

    /// A compare-and-swap batch: `applied` or `conflict` (a batch without a copy cursor
    /// also ends the source's initial copy, if any).
    public func batch(sourceID: String, expected: UInt64, new: UInt64, operations: [Mutation]) async throws -> Response {
        try await copyBatch(sourceID: sourceID, expected: expected, new: new, operations: operations, copyCursor: nil)
    }

    /// Conditional writes with compare-and-swap on `sourceID`'s position (qsrest): the
    /// root decides each write against its current state in the transaction that applies
    /// the batch. Answers `written` or `conflict`. A batch whose answer was lost is sent
    /// again by `perform` and then answered `conflict(current: new)`: the caller takes
    /// that as applied, its outcomes unknown.
    /// `sending` turns `.sent` once the request is handed to a connection: after that its
    /// outcome is unknown until an answer comes. A caller that gives up sets it to
    /// `.abandoned` under the same lock, and the request is then never sent: so a write
    /// answered "not applied" cannot be applied later.
    public func writes(sourceID: String, expected: UInt64, new: UInt64, writes: [ConditionalWrite],
                       sending: NIOLockedValueBox<SendState>? = nil) async throws -> Response {
        let request = Request.writes(.init(token: token, sourceID: sourceID, expected: expected, new: new, writes: writes))
        // Whether a try may have been applied: it went out and got no answer, or an error
        // answer that does not say nothing was done (a root cluster's storage-error may
        // follow a commit in etcd).
        let mayBeApplied = NIOLockedValueBox(false)
        let r = try await perform("writes", refusedAtOnce: true) { client in
            if let sending {
                let go = sending.withLockedValue { state -> Bool in
                    guard state != .abandoned else { return false }
                    state = .sent
                    return true
                }
                guard go else { throw CancellationError() }
            }
            let r: Response
            do {
                r = try await client.send(request, timeout: Self.callTimeout)
            } catch {
                mayBeApplied.withLockedValue { $0 = true }
                throw error
            }
            switch r {
            case .written, .conflict: return r
            case let .error(code, message):
                // Refused before anything was done (a node that takes no writes, ...): if
                // every try so far was answered so, nothing is applied (after a cut-over to a
                // node listed in --root that is now a replica, a caller giving up said
                // "outcome unknown").
                let nothingDone = ErrorCode(rawValue: code).map { Self.refusedBeforeAnything.contains($0) } ?? false
                let applied = mayBeApplied.withLockedValue { may in
                    if !nothingDone { may = true }
                    return may
                }
                if let sending, !applied {
                    sending.withLockedValue { if $0 == .sent { $0 = .notSent } }
                }
                throw ClientError.server(code: code, message: message)
            default: throw ClientError.unexpected("\(r)")
            }
        }
        confirm(request, r)
        return r
    }

    /// An initial copy's batch: a compare-and-swap batch like `batch` that also stores
    /// `copyCursor` beside the checkpoint (nil: the copy ends with this batch).
    public func copyBatch(sourceID: String, expected: UInt64, new: UInt64, operations: [Mutation],
                          copyCursor: [UInt8]?) async throws -> Response {
        let request = Request.batch(.init(token: token, sourceID: sourceID, expected: expected, new: new,
                                          operations: operations, copyCursor: copyCursor))
        let r = try await perform("batch", writes: true) { client in
            try Self.writeAnswer(try await client.send(request, timeout: Self.callTimeout))
        }
        confirm(request, r)
        return r
    }

    /// The hash of the root's log entry at `index` (nil: it holds none there).
    public func entryHash(at index: UInt64) async throws -> [UInt8]? {
        try await perform("read-log") { try await Self.entryHash(on: $0, at: index) }
    }

    /// The cursor of the source's unfinished initial copy, nil when none is in progress.
    public func copyCursor(sourceID: String) async throws -> [UInt8]? {
        try await perform("get-copy-cursor") { client in
            try await Self.copyCursor(on: client, sourceID: sourceID)
        }
    }

    /// Compatible-mode write: entries appended verbatim.
    /// `sourceTimeNs`: the source root's freshest word, passed on (0: unknown).
    public func append(_ entries: [StoredEntry], sourceTimeNs: UInt64 = 0) async throws -> Response {
        let token = self.token
        return try await perform("append") { client in
            try Self.writeAnswer(try await client.send(.append(token: token, entries: PackedEntries(entries), sourceTimeNs: sourceTimeNs), timeout: Self.callTimeout))
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
        guard let object = NodeStatus.parse(json),
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

    public func close() async { await drop("this process is stopping") }
}
