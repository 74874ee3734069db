import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import QSBytes
import QSEtcd
import QSNet
import QSModel
import QSStore
import QSWire

/// What the node does with each request, independent of sockets: the store, the write
/// and replication tokens and the metrics. Store work runs on the store's own threads.
public final class NodeCore: Sendable {
    public let store: Store
    public let metrics: NodeMetrics
    /// Writes (`--write-token-file`) and replication streams (`--replication-token-file`).
    let writeGate: TokenGate
    let replicationGate: TokenGate
    /// Role changes (promote, demote): the admin token (`--admin-token-file`). Without one,
    /// they are taken from local peers only (loopback, Unix socket), with the write token.
    let adminGate: TokenGate
    /// Reads from another machine (get, scan, log, head, status, checkpoints, digests): a
    /// connection presents any of the node's tokens once (`auth`, or a write, hello or role
    /// change that passes its own gate). Open when the node has no token (loopback only).
    let readGate: TokenGate
    let logger: Logger
    /// Warnings about what peers send, at most one per peer every 10 s (the rest counted).
    let badInput = RateLimitedLog()
    let helloLog = RateLimitedLog(window: .seconds(60))
    /// A cluster member's commits etcd did not make: once a minute per kind of failure.
    let etcdLog = RateLimitedLog(window: .seconds(60))
    /// Writers refused for another source descriptor: each retries at its reconnections.
    let descriptorLog = RateLimitedLog(window: .seconds(60))
    /// Whether this node takes writes (a root) or only replicates (a replica).
    public let writable: Bool
    /// Wakes subscription streams when the log grows.
    public let watcher: LogWatcher
    /// What a replica knows of its upstream and of the root's freshest word: the one value
    /// `status`, `/readyz` and the scrape all read.
    let following = NIOLockedValueBox(UpstreamStatus())
    /// A root that mirrors another (write role `mirror`): the source root's freshest word
    /// its mirror bridge passed on with its appends — the root's time its replicas see, so
    /// they age when the source root dies even though this node is alive.
    let mirroring = NIOLockedValueBox<(active: Bool, sourceTimeNs: UInt64)>((false, 0))
    /// Snapshots are made one at a time.
    let snapshots = SnapshotQueue()
    /// The writers (bridges) connected, as their hello introduced them.
    public let writers = Writers()
    /// A root cluster's member (`--etcd`): batches commit through etcd, not into the store.
    public let cluster: ClusterMember?
    /// The budget for large answers not yet read by their clients, shared with the read
    /// ports (`--read-reply-memory`): a read on the write port whose answer would pass it is
    /// refused `busy`.
    public let replyMemory: ReplyMemory
    /// Reads refused for `replyMemory`: a warning at most every 10 s (the cause is every client's).
    let replyMemoryLog = RateLimitedLog()

    /// What a replica knows of its upstream, as of now.
    public var upstreamStatus: UpstreamStatus {
        var s = following.withLockedValue { $0 }
        s.nowNs = wallClockNanoseconds()
        return s
    }

    /// Changes what the replica knows of its upstream.
    public func updateUpstream(_ change: (inout UpstreamStatus) -> Void) {
        following.withLockedValue { change(&$0) }
    }
    /// Caps on what one read request may ask for.
    public static let maxLogEntriesPerRead: UInt32 = 10_000
    public static let maxRecordsPerPage: UInt32 = 10_000

    /// One of the node's own tokens (replication, write or admin), nil when it has none:
    /// what it presents to an address that may be itself (`ReplicaService`), to read its id.
    public let ownToken: [UInt8]?

    public init(store: Store, token: [UInt8]?, replicationToken: [UInt8]? = nil, adminToken: [UInt8]? = nil,
                writable: Bool = true, metrics: NodeMetrics = NodeMetrics(), watcher: LogWatcher = LogWatcher(),
                cluster: ClusterMember? = nil, replyMemory: ReplyMemory = ReplyMemory(limit: ReplyMemory.defaultLimit),
                logger: Logger) {
        ownToken = replicationToken ?? token ?? adminToken
        self.store = store
        self.replyMemory = replyMemory
        self.watcher = watcher
        self.cluster = cluster
        writeGate = TokenGate(guarding: "write", token: token, flag: "--write-token-file on every write", logger: logger, factory: metrics.factory)
        replicationGate = TokenGate(guarding: "replication", token: replicationToken,
                                    flag: "--replication-token-file to subscribe or take a snapshot (a replica's --upstream-token-file)",
                                    logger: logger, factory: metrics.factory)
        adminGate = TokenGate(guarding: "admin", token: adminToken, flag: "--admin-token-file to promote or demote it (qsctl --admin-token-file)",
                              logger: logger, factory: metrics.factory)
        let held = [(token, "--write-token-file"), (replicationToken, "--replication-token-file"), (adminToken, "--admin-token-file")]
            .filter { $0.0 != nil }
        readGate = TokenGate(guarding: "read", tokens: held.compactMap(\.0),
                             flag: held.map(\.1).joined(separator: " or ") + (held.count > 1 ? " (any of them)" : "") + " to read from another machine",
                             logger: logger, factory: metrics.factory)
        self.writable = writable
        self.metrics = metrics
        self.logger = logger
    }

    /// Records the root a compatible bridge's hello names (`client`'s `source=`) before the
    /// bridge writes anything: in the store (`StoreTransaction.mirrorSourcesSeen`), a
    /// cluster member's in etcd for every member. So a mirror fed by a bridge always names
    /// the root it reads, across restarts, and `qsctl promote` asks it. Throws when it
    /// cannot be recorded: the hello is refused (`storage-error`) and the bridge tries again.
    private func recordSource(ofClient client: String) async throws {
        guard writable, let source = Writers.recordedSource(ofClient: client) else { return }
        // A promoted root refuses compatible appends: nothing to record (the list is what
        // its next promote asks, once a demote made it a mirror again).
        if let cluster {
            guard cluster.roleState.withLockedValue({ $0.role }) != .promoted, cluster.sourcesSeen?.last != source else { return }
            try await cluster.noteSourceSeen(source)
        } else {
            let (role, seen) = try store.readInline { (try $0.writeRole(), try $0.mirrorSourcesSeen()) }
            guard role != .promoted, seen.last != source else { return }
            try await store.write { txn in
                let current = try txn.mirrorSourcesSeen()
                let next = Writers.adding(source, to: current)
                if next != current { try txn.setMirrorSourcesSeen(next) }
            }
        }
    }

    /// The roots compatible bridges named, newest last: a cluster's from etcd (nil until
    /// the member has read them), a single root's from its store (nil if it cannot be read).
    func sourcesSeen() -> [String]? {
        if let cluster { return cluster.sourcesSeen }
        return try? store.readInline { try $0.mirrorSourcesSeen() }
    }

    /// Time of the root's freshest word this node has (ns since the epoch).
    public var rootTimeNs: UInt64 {
        guard writable else { return following.withLockedValue { $0.rootTimeNs } }
        if let cluster { return cluster.rootTimeNs }
        let m = mirroring.withLockedValue { $0 }
        return m.active ? m.sourceTimeNs : wallClockNanoseconds()
    }

    /// Reads the write role from the store (at start): a mirror's root time is its
    /// source's until an append says more.
    public func loadWriteRole() async throws {
        let role = try await store.writeRole()
        mirroring.withLockedValue { $0.active = role == .mirror }
    }

    private func noteMirroring(_ active: Bool, sourceTimeNs: UInt64) {
        mirroring.withLockedValue { m in
            if active != m.active { m = (active, 0) }
            m.sourceTimeNs = max(m.sourceTimeNs, sourceTimeNs)
        }
    }

    /// Records `qs_write_role` from the store (before a scrape): `replica`, or a root's
    /// open, promoted or mirror (a cluster member's, the cluster's as applied).
    public func recordWriteRole() {
        guard writable else { return metrics.recordWriteRole("replica") }
        if let role = try? store.readInline({ try $0.writeRole() }) { metrics.recordWriteRole(role.rawValue) }
    }

    /// An operator's promote or demote: logged with the peer and the head it happened at.
    func changeRole(_ change: Request.RoleChange, peer: String) async throws -> Response {
        let target: WriteRole = change == .promote ? .promoted : .mirror
        let before: WriteRole, head: Head
        if let cluster {
            // A member that does not follow etcd (catching up, cut off) says a stale role and
            // no sources in its status: what qsctl promote checks before it promotes could not
            // be checked through it. Refused, nothing changed; a demote goes through.
            if change == .promote, case let (false, why) = cluster.status {
                return .error(.notWritable, "this root cluster member does not follow etcd now (\(why)): what promote checks first cannot be read through it; promote through a member that follows etcd, or once this one does (its /readyz 200)")
            }
            // A cluster member changes the whole cluster's role, in etcd.
            (before, head) = try await cluster.changeRole(to: target)
        } else {
            (before, head) = try await store.write { txn in
                let before = try txn.writeRole()
                if change == .promote && before == .open {
                    return (before, try txn.head())
                }
                return (before, try txn.setWriteRole(target))
            }
        }
        // A demoted root was the root a moment ago: its time is now until appends say more.
        noteMirroring(change == .demote, sourceTimeNs: wallClockNanoseconds())
        if change == .promote && before == .open {
            logger.notice("promote: this root already takes writes (it never mirrored); nothing changed",
                          metadata: ["peer": "\(peer)", "head-index": "\(head.index)"])
        } else {
            logger.notice(change == .promote ? "promoted: this root now takes writes and refuses compatible appends"
                                             : "demoted: this root is now a compatible mirror; it refuses batches and takes appends continuing its head",
                          metadata: ["peer": "\(peer)", "was": "\(before.rawValue)", "now": "\(target.rawValue)",
                                     "head-index": "\(head.index)", "head-hash": "\(hexString(head.hash))"])
        }
        return .head(head)
    }

    /// Checks a subscription's starting point: nil when the stream can start.
    public func checkSubscription(from index: UInt64, hash: [UInt8], peer: String) async -> Response? {
        do {
            let (head, known, w) = try await store.read { txn in (try txn.head(), try txn.hash(at: index), try txn.logWindow()) }
            if index > head.index {
                metrics.subscriptionsRefused.increment()
                return .error(.behind, "the subscriber is at index \(index), ahead of this node's head \(head.index): subscribe to a node at least as recent")
            }
            guard let here = known else {
                metrics.subscriptionsRefused.increment()
                return .error(.needsBootstrap, "this node retains log entries from index \(w.firstIndex) only; a subscriber at \(index) must bootstrap from a snapshot")
            }
            guard here == hash else {
                metrics.divergedSubscribers.increment()
                badInput.warning(logger, "subscriber has another history: refused", peer: peer, metadata: ["index": "\(index)",
                                                                                     "their-hash": "\(hexString(hash))", "our-hash": "\(hexString(here))"])
                return .error(.diverged, "diverged: at index \(index) this node's chained hash is \(hexString(here)), the subscriber's is \(hexString(hash)); the histories differ and will not be mixed")
            }
            return nil
        } catch {
            return .error(.storageError, "cannot check the subscription: \(error)")
        }
    }

    /// Executes an authorized, decoded request. Never throws: failures become error
    /// responses (and are counted and logged). `replies`: a read's large answer takes its
    /// bytes of the reply budget there as it is built, or is answered `busy`.
    public func handle(_ request: Request, peer: String, replies: AnswerReservation? = nil) async -> Response {
        metrics.request(request.name).increment()
        writers.touch(peer: peer)
        do {
            switch request {
            case let .hello(_, client):
                writers.hello(peer: peer, client: client)
                // Once a minute per host and client: a writer that checks this node and
                // passes it over (not a copy of the root it writes to) says hello each retry.
                helloLog.log(logger, .info, "writer connected", peer: peer, kind: client, metadata: ["client": "\(client)"])
                // A cluster member that does not follow the cluster's log (etcd unreachable
                // or without quorum, behind etcd's window) cannot commit: a writer with
                // other members' addresses moves on to one of them.
                if let cluster, case let (false, why) = cluster.status {
                    return .error(.storageError, "this root cluster member cannot take writes now: \(why)")
                }
                do {
                    try await recordSource(ofClient: client)
                } catch {
                    helloLog.log(logger, .warning, "a compatible bridge's hello refused: the root it reads could not be recorded", peer: peer,
                                 kind: "sources-seen", metadata: ["error": "\(error)"])
                    return .error(.storageError, "this root cannot record the root this bridge reads (qsctl promote asks it): \(error)")
                }
                return .head(try await store.head())
            case let .batch(b):
                let start = ContinuousClock.now
                if cluster != nil, b.copyCursor != nil {
                    return .error(.unsupported, "an initial copy into a root cluster is not supported yet: run the bridge's initial copy into a single root (qsktbridge --initial-copy), then mirror it into the cluster")
                }
                let outcome = if let cluster {
                    try await cluster.commit(sourceID: b.sourceID, expected: b.expected, new: b.new, operations: b.packed)
                } else {
                    try await store.applyBatch(sourceID: b.sourceID, expected: b.expected, new: b.new, operations: b.packed,
                                               copyCursor: b.copyCursor)
                }
                return batchResponse(outcome, b, peer: peer, since: start)
            case let .writes(b):
                let start = ContinuousClock.now
                let outcome = if let cluster {
                    try await cluster.commit(sourceID: b.sourceID, expected: b.expected, new: b.new, writes: b.writes)
                } else {
                    try await store.applyWrites(sourceID: b.sourceID, expected: b.expected, new: b.new, writes: b.writes)
                }
                metrics.batchApply.recordSeconds((ContinuousClock.now - start).seconds)
                switch outcome {
                case let .written(index, outcomes):
                    metrics.batchesApplied.increment()
                    if let index {
                        metrics.logHead.record(Double(index))
                        watcher.publish()
                    }
                    return .written(logIndex: index, outcomes: outcomes)
                case let .conflict(current):
                    metrics.conflicts.increment()
                    logger.debug("writes conflict", metadata: ["source-id": "\(b.sourceID)", "expected": "\(b.expected)",
                                                               "current": "\(current)", "peer": "\(peer)"])
                    return .conflict(current: current)
                }
            case let .getCheckpoint(sid):
                if let cluster { return .checkpoint(try await cluster.checkpoint(sourceID: sid)) }
                return .checkpoint(try await store.checkpoint(sourceID: sid))
            case let .getCopyCursor(sid):
                return .value(try await store.copyCursor(sourceID: sid).map { Record(value: $0, expiry: nil) })
            case let .setDescriptor(_, sid, descriptor, replace):
                return try await setDescriptor(sourceID: sid, descriptor: descriptor, replace: replace, peer: peer)
            case .head:
                return .head(try await store.head())
            case let .readLog(from, count):
                let entries = try await store.entries(from: from, count: Int(min(count, Self.maxLogEntriesPerRead)))
                let bytes = entries.reduce(0) { $0 + $1.bytes.count + 44 }
                guard replies?.take(bytes) ?? true else { return busy(bytes: bytes, peer: peer) }
                return .entries(entries)
            case let .get(key):
                let now = wallClockSeconds()
                // The value's size is seen in place: a value the reply budget has no room
                // for is never copied.
                return try await store.read { txn in
                    try txn.withRecord(key) { view -> Response in
                        guard let view, !view.isExpired(at: now) else { return .value(nil) }
                        guard replies?.take(view.value.count) ?? true else { return self.busy(bytes: view.value.count, peer: peer) }
                        return .value(Record(value: Array(view.value), expiry: view.expiry))
                    }
                }
            case let .scan(prefix, cursor, limit, asOf):
                let page = try await store.scan(prefix: prefix, after: cursor.isEmpty ? nil : cursor,
                                          limit: Int(min(max(limit, 1), Self.maxRecordsPerPage)),
                                          now: asOf == 0 ? wallClockSeconds() : asOf)
                let bytes = Self.pageBytes(page.records.lazy.map { ($0.key, $0.record) })
                guard replies?.take(bytes) ?? true else { return busy(bytes: bytes, peer: peer) }
                return .page(records: page.records.map { .init(key: $0.key, record: $0.record) }, next: page.next)
            case .subscribe, .snapshot, .snapshotFrom:
                return .error(.invalidRequest, "\(request.name) is a streaming request, handled by the connection")
            case let .append(_, entries, sourceTime) where entries.isEmpty:
                // A mirror bridge's probe while its source is quiet: does this root still
                // take appends? Nothing is written; the source root's time is noted.
                var (role, head, empty) = try await store.read { txn in
                    let head = try txn.head()
                    return (try txn.writeRole(), head, head.index == 0 ? try txn.checkpoints().isEmpty : false)
                }
                if role == .promoted { return .error(.unsupported, "\(StoreError.promoted)") }
                // An empty root (no entry, no checkpoint) a compatible mirror feeds, its
                // source empty so far, is a mirror from the first probe as from the first
                // entry: until then a writer could take it for a root and fork it from the
                // history it is to carry.
                if role == .open, empty, cluster == nil,
                   try await store.write({ txn -> Bool in
                       guard try txn.writeRole() == .open, try txn.head().index == 0, try txn.checkpoints().isEmpty else { return false }
                       try txn.setWriteRole(.mirror)
                       return true
                   }) {
                    role = .mirror
                    logger.notice("became a compatible mirror: an empty root probed by a compatible mirror bridge; it refuses other writes (if it is the root meant to take the writes, that bridge points the wrong way: stop it, then run qsctl promote --force on this node)",
                                  metadata: ["peer": "\(peer)"])
                }
                if role == .mirror {
                    noteMirroring(true, sourceTimeNs: sourceTime)
                    // A cluster's members learn the source's time through etcd.
                    try await cluster?.noteSourceTime(sourceTime)
                }
                return .applied(logIndex: head.index, kept: 0, dropped: 0)
            case let .append(_, entries, sourceTime):
                do {
                    // A cluster member commits the entries through etcd (docs/ha.md).
                    let head = if let cluster { try await cluster.append(entries.entries, sourceTimeNs: sourceTime) } else {
                        try await store.appendEntries(entries, markCompatible: true)
                    }
                    noteMirroring(true, sourceTimeNs: sourceTime)
                    writers.touch(peer: peer, append: true)
                    metrics.batchesApplied.increment()
                    metrics.logHead.record(Double(head.index))
                    watcher.publish()
                    return .applied(logIndex: head.index, kept: UInt32(entries.count), dropped: 0)
                } catch StoreError.promoted {
                    metrics.invalidRequests.increment()
                    logger.warning("compatible append refused: this root was promoted", metadata: ["peer": "\(peer)"])
                    return .error(.unsupported, "\(StoreError.promoted)")
                } catch let AppendError.notNext(head, _) {
                    metrics.conflicts.increment()
                    return .conflict(current: head)
                } catch let error as AppendError {
                    metrics.invalidRequests.increment()
                    logger.error("compatible append refused", metadata: ["error": "\(error)", "peer": "\(peer)"])
                    if case .diverged = error { return .error(.diverged, "\(error)") }
                    return .error(.invalidRequest, "\(error)")
                }
            case let .changeRole(_, change):
                return try await changeRole(change, peer: peer)
            case let .digest(after, through, limit, asOf):
                let d = try await store.digest(after: after.isEmpty ? nil : after, through: through.isEmpty ? nil : through,
                                         limit: Int(min(max(limit, 1), 1_000_000)), now: asOf == 0 ? wallClockSeconds() : asOf)
                return .digest(count: d.count, hash: d.hash, last: d.last, more: d.more)
            case .status:
                return .status(try await statusJSON())
            case .auth:
                return .head(try await store.head())
            case let .rangeRecords(after, through, limit, asOf):
                let list = try await store.records(after: after.isEmpty ? nil : after, through: through.isEmpty ? nil : through,
                                             now: asOf == 0 ? wallClockSeconds() : asOf, limit: Int(min(max(limit, 1), Self.maxRecordsPerPage)))
                let bytes = Self.pageBytes(list.lazy.map { ($0.key, $0.record) })
                guard replies?.take(bytes) ?? true else { return busy(bytes: bytes, peer: peer) }
                return .page(records: list.map { .init(key: $0.key, record: $0.record) }, next: nil)
            }
        } catch {
            return failure(error, request: request, peer: peer)
        }
    }

    /// About the bytes a page of records takes in its answer (keys, values, their lengths).
    static func pageBytes(_ records: some Sequence<([UInt8], Record)>) -> Int {
        records.reduce(0) { $0 + $1.0.count + $1.1.value.count + 17 }
    }

    /// A batch's answer, counted (and its log entry announced to subscribers).
    private func batchResponse(_ outcome: BatchOutcome, _ b: Request.Batch, peer: String, since start: ContinuousClock.Instant) -> Response {
        metrics.batchApply.recordSeconds((ContinuousClock.now - start).seconds)
        switch outcome {
        case let .applied(index, kept, dropped):
            metrics.batchesApplied.increment()
            metrics.opsApplied.increment(by: kept)
            metrics.identicalDropped.increment(by: dropped)
            if let index {
                metrics.logHead.record(Double(index))
                watcher.publish()
            }
            return .applied(logIndex: index, kept: UInt32(kept), dropped: UInt32(dropped))
        case let .conflict(current):
            metrics.conflicts.increment()
            logger.debug("batch conflict", metadata: ["source-id": "\(b.sourceID)", "expected": "\(b.expected)",
                                                      "current": "\(current)", "peer": "\(peer)"])
            return .conflict(current: current)
        }
    }

    /// Records a source's descriptor (`Request.setDescriptor`); answers the descriptor the
    /// root holds after it. A root cluster's member records it for the whole cluster,
    /// through etcd (`ClusterMember.setDescriptor`).
    private func setDescriptor(sourceID: String, descriptor: String, replace: Bool, peer: String) async throws -> Response {
        // Empty: a writer asks which one is held (a cluster's at its head), recording nothing.
        if descriptor.isEmpty {
            let held = if let cluster { try await cluster.descriptor(sourceID: sourceID) } else { try await store.descriptor(sourceID: sourceID) }
            return .value(held.map { Record(value: Array($0.utf8), expiry: nil) })
        }
        let held: String
        let outcome = if let cluster {
            try await cluster.setDescriptor(sourceID: sourceID, descriptor: descriptor, replace: replace)
        } else {
            try await store.setDescriptor(sourceID: sourceID, descriptor: descriptor, replace: replace)
        }
        switch outcome {
        case .unchanged:
            held = descriptor
        case let .recorded(index, previous):
            held = descriptor
            metrics.logHead.record(Double(index))
            watcher.publish()
            logger.notice(previous == nil ? "source descriptor recorded" : "source descriptor replaced",
                          metadata: ["source-id": "\(sourceID)", "descriptor": "\(descriptor)", "previous": "\(previous ?? "none")",
                                     "log-index": "\(index)", "peer": "\(peer)"])
        case let .differs(stored):
            held = stored
            metrics.descriptorRefusals.increment()
            descriptorLog.warning(logger, "source descriptor refused: the root holds another for this source id (the writer stops)",
                                  peer: peer, metadata: ["source-id": "\(sourceID)", "held": "\(stored)", "offered": "\(descriptor)"])
        }
        return .value(Record(value: Array(held.utf8), expiry: nil))
    }

    /// Takes a batch for a single root (not a cluster member) straight to the store's writer
    /// thread, without a task on the cooperative pool; the writer hands back only the outcome,
    /// and `done` gets the answer on `loop`, counted and logged there as `handle` would (the
    /// writer thread does nothing but commit). Two thread hops a batch (event loop to writer
    /// and back) instead of four. Returns false, having done nothing, for any other request
    /// or node: those go through `handle`.
    public func handleBatchDirectly(_ request: Request, peer: String, on loop: any EventLoop,
                                    done: @escaping @Sendable (Response) -> Void) -> Bool {
        guard cluster == nil, case let .batch(b) = request else { return false }
        metrics.request(request.name).increment()
        writers.touch(peer: peer)
        let start = ContinuousClock.now
        store.applyBatch(sourceID: b.sourceID, expected: b.expected, new: b.new, operations: b.packed, copyCursor: b.copyCursor) { result in
            loop.execute {
                switch result {
                case let .success(outcome): done(self.batchResponse(outcome, b, peer: peer, since: start))
                case let .failure(error): done(self.failure(error, request: request, peer: peer))
                }
            }
        }
        return true
    }

    /// A failed request's answer, counted and logged by what failed.
    private func failure(_ error: any Error, request: Request, peer: String) -> Response {
        do {
            throw error
        } catch StoreError.compatibleOnly {
            // Not a stop for a bridge: a demoted root may be promoted again (a cut-over
            // undone), and a bridge started against a mirror before its promotion waits.
            metrics.invalidRequests.increment()
            return .error(.notWritable, "\(StoreError.compatibleOnly)")
        } catch let error as StoreError where error.isDamage {
            // Counted, and logged once, by the store's integrity; the node stops serving it.
            metrics.storageErrors.increment()
            return .error(.storageError, "not served: \(error)")
        } catch let error as StoreError where WriteFailure.classify(error) == nil {
            metrics.invalidRequests.increment()
            badInput.warning(logger, "request refused", peer: peer, metadata: ["request": "\(request.name)", "error": "\(error)"])
            return .error(.invalidRequest, "\(error)")
        } catch let error as EtcdError {
            metrics.storageErrors.increment()
            // Once a minute per kind of failure: every writer's request meets the same etcd.
            let kind: String = if case .unauthenticated = error { "credentials" } else { "commit" }
            etcdLog.log(logger, .error, "etcd did not commit", budget: kind, metadata: ["request": "\(request.name)", "error": "\(error)", "peer": "\(peer)"])
            if case .unauthenticated = error {
                // Refused for the member's credentials: etcd executed nothing.
                if case .changeRole = request {
                    return .error(.notWritable, "the role change was not made: the root cluster's etcd refused this member's credentials: \(error)")
                }
                return .error(.storageError, "not committed: the root cluster's etcd refused this member's credentials (\(error)); the write is not acknowledged: resume from the checkpoint once the member's credentials are set right")
            }
            if case .setDescriptor = request {
                return .error(.storageError, "the root cluster's etcd did not answer (no quorum, or unreachable?): \(error); the source descriptor may or may not be recorded: the writer offers it again before its next write")
            }
            if case .changeRole = request {
                return .error(.storageError, "the root cluster's etcd did not commit the role change (no quorum, or unreachable?): \(error); it may still take effect: read write_role in qsctl status once etcd answers, and run the command again if it did not change")
            }
            if case .unreachable = error {
                return .error(.storageError, "the root cluster's etcd did not commit (no quorum, or unreachable?): \(error); the write is not acknowledged: resume from the checkpoint")
            }
            // Sent, but no answer or an error answer ("leader changed", "request timed
            // out"): etcd may still have committed it.
            return .error(.storageError, "the root cluster's etcd did not confirm the commit (no quorum, or unreachable?): \(error); the write is not acknowledged and may or may not have been committed: resume from the checkpoint")
        } catch let ClusterError.tooLarge(why) {
            // The batch's own size, not the cluster's health: the writer sends less.
            metrics.invalidRequests.increment()
            badInput.warning(logger, "batch refused: larger than the cluster's etcd takes", peer: peer, metadata: ["request": "\(request.name)", "error": "\(why)"])
            return .error(.frameTooLarge, why)
        } catch let error as ClusterError {
            metrics.storageErrors.increment()
            logger.error("cluster commit failed", metadata: ["request": "\(request.name)", "error": "\(error)", "peer": "\(peer)"])
            return .error(.storageError, "root cluster: \(error)")
        } catch let error where WriteFailure.classify(error) != nil {
            metrics.storageErrors.increment()
            let kind = WriteFailure.classify(error) ?? .io
            logger.error("\(kind.rawValue): \(kind.remedy)", metadata: ["request": "\(request.name)", "error": "\(error)", "peer": "\(peer)"])
            switch kind {
            case .mapFull:
                return .error(.storageFull, "the node's store is full (LMDB map size reached); nothing was written: the operator must raise --map-size")
            case .diskFull:
                return .error(.diskFull, "disk full: the filesystem holding the node's store has no space left; nothing was written; retry once space is freed")
            case .io:
                return .error(.storageError, "I/O error on the node's disk, nothing was written: \(error)")
            }
        } catch {
            metrics.storageErrors.increment()
            logger.error("storage error", metadata: ["request": "\(request.name)", "error": "\(error)", "peer": "\(peer)"])
            return .error(.storageError, "storage error, nothing was written: \(error)")
        }
    }
}
