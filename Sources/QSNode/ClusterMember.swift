import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import QSBytes
import QSEtcd
import QSModel
import QSNet
import QSStore
import ServiceLifecycle

/// One member of a root cluster (`qsnode --role root --etcd … --cluster NAME`): commits
/// batches through one etcd transaction each, and — as a service — applies the cluster's
/// committed log from etcd into its store in order (docs/ha.md). While it runs, it is the
/// only writer of the store's log.
public final class ClusterMember: Service, Sendable {
    public let etcd: EtcdClient
    public let keys: ClusterKeys
    let store: Store
    /// Wakes the member's subscription streams when entries are applied.
    let watcher: LogWatcher
    let nodeID: String
    /// `log/` keys kept in etcd behind the head (and behind every member's applied index).
    let window: UInt64
    /// The most bytes etcd takes in one request (etcd's `--max-request-bytes`): a log entry
    /// must fit one transaction with its keys.
    let maxRequestBytes: Int
    /// How long this member's `applied/` key outlives its last write (`--etcd-applied-ttl`).
    let appliedTTL: Duration
    /// The other members' write addresses: a member behind etcd's window catches up from
    /// a snapshot of one of them (`--cluster-peers`).
    let peers: [Endpoint]
    /// Presented to a peer for its snapshot (its `--replication-token-file`).
    let peerToken: [UInt8]
    let logger: Logger

    /// The etcd revision applied into the store; batches wait for their own.
    private let appliedRevision = NIOLockedValueBox<Int64>(0)
    private let revisionWatcher = LogWatcher()
    /// The cluster's write role as applied into the store, and the etcd revision it was
    /// written at (0: never written, the cluster is `open`): every write compares it.
    let roleState = NIOLockedValueBox<(role: WriteRole, revision: Int64)>((.open, 0))
    /// Whether the applier follows etcd (watch open) and why not.
    let state = NIOLockedValueBox<(following: Bool, detail: String)>((false, "starting"))

    let commits: Counter
    let commitRetries: Counter
    let etcdErrors: Counter
    let commitSeconds: Metrics.Timer
    let appliedIndex: Gauge

    let snapshotCatchUps: Counter
    /// 1 while etcd executes this member's requests without credentials.
    let etcdOpen: Gauge
    let etcdTokens: Counter
    let etcdAuthRefusals: Counter
    private let etcdCounted = NIOLockedValueBox((tokens: 0, refusals: 0))
    /// "lost etcd" and credential refusals, once per cause a minute.
    let etcdLog = RateLimitedLog(window: .seconds(60))
    /// This process's claim on its node id (`claims/<id>`): a random nonce, then what the
    /// process is (`instance`: host, pid, write address).
    let claimValue: [UInt8]
    /// Another process's claim on this member's node id as last read, and what it is once
    /// seen renewed (a live process: this member's data directory was copied from it).
    let duplicate = NIOLockedValueBox<(seen: EtcdKV?, holder: String?)>((nil, nil))
    /// 1 while another live process holds this member's node id.
    let nodeIDConflict: Gauge
    /// The slowest member's clock (ns) as read at the last `applied/` write (`purgeNowSeconds`).
    let purgeClock = NIOLockedValueBox<UInt64?>(nil)

    public init(etcd: EtcdClient, cluster: String, store: Store, watcher: LogWatcher, nodeID: String,
                window: UInt64, appliedTTL: Duration = ClusterMember.appliedTTL, peers: [Endpoint] = [], peerToken: [UInt8] = [],
                maxRequestBytes: Int = ClusterMember.etcdMaxRequestBytes, instance: String = "", logger: Logger,
                factory: any MetricsFactory = MetricsSystem.factory) {
        var nonce = SystemRandomNumberGenerator()
        claimValue = Array((String(nonce.next(), radix: 16) + " " + instance).utf8)
        nodeIDConflict = Gauge(label: "qs_cluster_node_id_conflict", factory: factory)
        self.maxRequestBytes = maxRequestBytes
        self.peers = peers
        self.peerToken = peerToken
        snapshotCatchUps = Counter(label: "qs_cluster_snapshot_catchups_total", factory: factory)
        self.etcd = etcd
        keys = ClusterKeys(cluster: cluster)
        self.store = store
        self.watcher = watcher
        self.nodeID = nodeID
        self.window = window
        self.appliedTTL = appliedTTL
        self.logger = logger
        commits = Counter(label: "qs_cluster_commits_total", factory: factory)
        commitRetries = Counter(label: "qs_cluster_commit_retries_total", factory: factory)
        etcdErrors = Counter(label: "qs_cluster_etcd_errors_total", factory: factory)
        commitSeconds = Metrics.Timer(label: "qs_cluster_commit_seconds", preferredDisplayUnit: .seconds, factory: factory)
        appliedIndex = Gauge(label: "qs_cluster_applied_index", factory: factory)
        etcdOpen = Gauge(label: "qs_cluster_etcd_open", factory: factory)
        etcdTokens = Counter(label: "qs_cluster_etcd_tokens_total", factory: factory)
        etcdAuthRefusals = Counter(label: "qs_cluster_etcd_auth_refusals_total", factory: factory)
        lag = NIOLockedValueBox(ApplyLag(limits: .init(grace: Self.appliedInterval / 4, quietLimit: Self.appliedInterval,
                                                       behindLimit: etcd.timeout, leftAfter: Self.watchQuietLimit(etcd.timeout))))
    }

    /// Whether etcd committed this member's last `applied/` write (every 2 s): a watch can
    /// stay open on an etcd member that lost its quorum, this cannot.
    let quorum = NIOLockedValueBox<String?>(nil)

    /// Whether the member follows the cluster's log and etcd has a quorum, for `/readyz`.
    public var status: (following: Bool, detail: String) {
        if let holder = duplicate.withLockedValue({ $0.holder }) {
            return (false, "another live process holds this member's node id \(nodeID) in etcd (\(holder)): this member's data directory was copied from that member's. Stop this process, move its --data aside and start it with an empty directory: it takes a snapshot from a peer and an id of its own")
        }
        let s = state.withLockedValue { $0 }
        guard s.following else { return s }
        if let lost = quorum.withLockedValue({ $0 }) {
            if lost.contains("refused this member's credentials") { return (false, lost) }
            return (false, "etcd did not commit this member's last write (no quorum?): \(lost)")
        }
        if let problem = lagProblem() { return (false, problem) }
        return s
    }

    /// Revisions etcd committed for this member that its watch has not delivered (a watch
    /// stuck on an etcd member that stopped answering): `/readyz` says so without waiting
    /// for the stuck watch to be left.
    let lag: NIOLockedValueBox<ApplyLag>

    private func lagProblem() -> String? {
        let applied = revision
        return lag.withLockedValue { $0.problem(applied: applied) }
    }

    /// etcd committed a write of this member at `revision` (`appliedWrite`: its `applied/`
    /// write, which counts from a failed one before it).
    func noteCommitted(_ revision: Int64, appliedWrite: Bool = false) {
        lag.withLockedValue { lag in
            let applied = self.revision
            if appliedWrite { lag.appliedWriteCommitted(revision, applied: applied) } else { lag.committed(revision, applied: applied) }
        }
    }

    public var revision: Int64 { appliedRevision.withLockedValue { $0 } }

    /// Before a scrape: whether etcd takes this member's requests without credentials, and
    /// the tokens it gave since the last scrape.
    public func refreshGauges() {
        if let open = etcd.answersWithoutCredentials { etcdOpen.record(open ? 1 : 0) }
        nodeIDConflict.record(duplicate.withLockedValue { $0.holder } == nil ? 0 : 1)
        let now = (tokens: etcd.tokens, refusals: etcd.authenticationsRefused)
        let new = etcdCounted.withLockedValue { counted in
            defer { counted = now }
            return (tokens: now.tokens - counted.tokens, refusals: now.refusals - counted.refusals)
        }
        if new.tokens > 0 { etcdTokens.increment(by: Int64(new.tokens)) }
        if new.refusals > 0 { etcdAuthRefusals.increment(by: Int64(new.refusals)) }
    }

    // MARK: committing

    /// Commits a batch through one etcd transaction (compare the source's checkpoint and
    /// the head the entry was prepared at; store the entry, the head and the checkpoint),
    /// then waits until this member has applied it. Throws when etcd does not commit or
    /// answer (`EtcdError`: the outcome may be unknown; the checkpoint resolves it).
    public func commit(sourceID: String, expected: UInt64, new: UInt64, operations: PackedMutations) async throws -> BatchOutcome {
        try await commit(sourceID: sourceID, expected: expected, new: new) {
            try await self.store.prepareBatch(sourceID: sourceID, expected: expected, new: new, operations: operations)
        }
    }

    /// Commits conditional writes (qsrest) like a batch: each write is decided against the
    /// state at the head the entry follows, and the decisions hold because the transaction
    /// compares that head.
    public func commit(sourceID: String, expected: UInt64, new: UInt64, writes: [ConditionalWrite]) async throws -> WritesOutcome {
        try await commit(sourceID: sourceID, expected: expected, new: new) {
            try await self.store.prepareWrites(sourceID: sourceID, expected: expected, new: new, writes: writes)
        }
    }

    /// One step of the expiry purge (`ExpiryPurger`) through the committed log: the expired
    /// records are found at this member's head and their deletes committed like a batch of
    /// `qs:expiry` comparing that head, so every member applies the same deletes from the
    /// log and a record written again meanwhile is never deleted. Members purge at once
    /// without harm: the first commit wins, the others find nothing left at the new head.
    /// Nothing is committed when nothing has expired.
    public func purgeExpired(after: [UInt8]?, scanLimit: Int, maxDeletes: Int, now ownNow: UInt64,
                             sourceID: String) async throws -> StoreTransaction.PurgeStep {
        // Judged by the slowest member's clock: a member whose clock runs ahead does not
        // delete what the others still serve. Nothing before the clocks are known.
        guard let clusterNow = purgeNowSeconds else { return StoreTransaction.PurgeStep(purged: 0, logIndex: nil, next: nil) }
        let now = min(ownNow, clusterNow)
        let expected = try await store.checkpoint(sourceID: sourceID) ?? 0
        var step = StoreTransaction.PurgeStep(purged: 0, logIndex: nil, next: after)
        let outcome = try await commit(sourceID: sourceID, expected: expected, new: expected + 1, skipWithoutEntry: true) {
            let p = try await self.store.preparePurge(after: after, scanLimit: scanLimit, maxDeletes: maxDeletes, now: now,
                                                      sourceID: sourceID, expected: expected)
            step = p.step
            return p.prepared
        }
        // Another member's purge committed first: this step is taken again once applied.
        guard case let .applied(index, _, _) = outcome else { return StoreTransaction.PurgeStep(purged: 0, logIndex: nil, next: after) }
        step.logIndex = index
        return step
    }

    /// `skipWithoutEntry`: a prepared batch that appends no entry commits nothing (the
    /// purge, which moves no checkpoint when nothing expired).
    private func commit<Outcome: CASOutcome>(sourceID: String, expected: UInt64, new: UInt64, skipWithoutEntry: Bool = false,
                                             prepare: () async throws -> Prepared<Outcome>) async throws -> Outcome {
        let start = ContinuousClock.now
        let cpKey = keys.checkpoint(sourceID)
        // Each round waits for the revision that beat it; a member that keeps losing to
        // others says so rather than spinning.
        for _ in 0..<1000 {
            try Task.checkCancellation()
            // Read before preparing: the store holds this role or a later one, and a later
            // one fails the compare below.
            let roleRevision = roleState.withLockedValue { $0.revision }
            let p = try await prepare()
            guard p.outcome.conflictPosition == nil else {
                // The local checkpoint differs: etcd's is the truth (this member may lag).
                let (kvs, _) = try await counted { try await self.etcd.range(cpKey) }
                let current = try kvs.first.map { try ClusterKeys.u64($0.value, "checkpoint") } ?? 0
                if current != expected { return .conflict(at: current) }
                try await waitApplied(kvs.first?.modRevision ?? 0)
                commitRetries.increment()
                continue
            }
            if skipWithoutEntry && p.entry == nil { return p.outcome }
            if let e = p.entry { try checkFits(entryBytes: e.hash.count + e.bytes.count, what: "the batch's log entry") }
            var success: [EtcdOp] = [.put(key: cpKey, value: ClusterKeys.u64Bytes(new))]
            if let e = p.entry {
                success = [.put(key: keys.log(e.index), value: e.hash + e.bytes), .put(key: keys.head, value: p.head.encoded())] + success
            }
            let compare: [EtcdCompare] = [
                expected == 0 ? .absent(key: cpKey) : .value(key: cpKey, equals: ClusterKeys.u64Bytes(expected)),
                keys.headIs(p.base),
                .modRevision(key: keys.role, equals: roleRevision),
            ]
            let r = try await counted {
                try await self.etcd.txn(compare: compare, success: success,
                                        failure: [.range(key: cpKey, end: nil, limit: 1), .range(key: self.keys.head, end: nil, limit: 1),
                                                  .range(key: self.keys.role, end: nil, limit: 1)])
            }
            if r.succeeded {
                try await committed(at: r.revision, resume: "ask for the checkpoint to go on")
                commitSeconds.recordSeconds((ContinuousClock.now - start).seconds)
                return p.outcome
            }
            let cp = r.ranges.first?.first, head = r.ranges.count > 1 ? r.ranges[1].first : nil
            let role = r.ranges.count > 2 ? r.ranges[2].first : nil
            let current = try cp.map { try ClusterKeys.u64($0.value, "checkpoint") } ?? 0
            if current != expected { return .conflict(at: current) }
            // Another member committed first, or the role changed: apply that, then prepare
            // again (a demoted cluster's store refuses the batch).
            commitRetries.increment()
            try await waitApplied(max(cp?.modRevision ?? 0, head?.modRevision ?? 0, role?.modRevision ?? 0))
        }
        throw ClusterError.notApplied("the batch lost 1000 rounds to other members' commits; nothing of it was committed: retry")
    }

    /// The most entries one append's etcd transaction carries (etcd's default: 128
    /// operations a transaction); its bytes are bounded by `maxRequestBytes`.
    static let appendChunkEntries = 100

    /// etcd's default `--max-request-bytes`.
    public static let etcdMaxRequestBytes = 1_572_864
    /// Room a transaction needs besides its entries' bytes (keys, the head, checkpoints,
    /// compares, framing).
    static let requestOverhead = 64 << 10

    /// Refuses, before etcd is asked, what etcd would refuse as too large: the same request
    /// would be refused on every try, and the writer would wait on it for good.
    func checkFits(entryBytes: Int, what: String) throws {
        guard entryBytes + Self.requestOverhead > maxRequestBytes else { return }
        throw ClusterError.tooLarge("\(what) is \(entryBytes) bytes: more than the root cluster's etcd takes in one request (\(maxRequestBytes) bytes, --etcd-max-request-bytes, etcd's --max-request-bytes, less \(Self.requestOverhead) for the transaction's keys); send smaller batches or values, or raise etcd's --max-request-bytes and this member's --etcd-max-request-bytes together")
    }

    /// A compatible append (`qsqsbridge --mode compatible` into the cluster): the source's
    /// entries, byte for byte. Each chunk is checked at this member's head with the store's
    /// `appendEntries` (rolled back) and committed through one etcd transaction comparing
    /// the head it follows and the write role; it puts the entries, the head, the
    /// checkpoints their origins carry and the role `mirror`. Returns the head after the
    /// last entry. Throws `AppendError.notNext` with the cluster's head when the entries do
    /// not follow it, `StoreError.promoted` when the cluster takes writes.
    public func append(_ entries: [StoredEntry], sourceTimeNs: UInt64 = 0) async throws -> Head {
        let start = ContinuousClock.now
        var head = try await store.head()
        var rest = entries[...]
        while !rest.isEmpty {
            var n = 0, bytes = 0
            let budget = maxRequestBytes - Self.requestOverhead
            for e in rest {
                let size = e.hash.count + e.bytes.count
                guard n < Self.appendChunkEntries, n == 0 || bytes + size <= budget else { break }
                n += 1
                bytes += size
            }
            if n == 1, let e = rest.first { try checkFits(entryBytes: e.hash.count + e.bytes.count, what: "log entry \(e.index)") }
            head = try await appendChunk(Array(rest.prefix(n)), sourceTimeNs: sourceTimeNs)
            rest = rest.dropFirst(n)
        }
        commitSeconds.recordSeconds((ContinuousClock.now - start).seconds)
        return head
    }

    private func appendChunk(_ entries: [StoredEntry], sourceTimeNs: UInt64) async throws -> Head {
        var caughtUp = false
        for _ in 0..<1000 {
            try Task.checkCancellation()
            let (role, roleRevision) = roleState.withLockedValue { ($0.role, $0.revision) }
            if role == .promoted { throw StoreError.promoted }
            let prepared: (base: Head, head: Head)
            do {
                prepared = try await store.prepareAppend(entries)
            } catch AppendError.notNext {
                // This member may lag the cluster: apply up to etcd's head, then judge again.
                guard !caughtUp else { throw AppendError.notNext(head: try await store.head().index, got: entries.first?.index ?? 0) }
                caughtUp = true
                let (kvs, _) = try await counted { try await self.etcd.range(self.keys.head) }
                try await waitApplied(kvs.first?.modRevision ?? 0)
                continue
            }
            var success: [EtcdOp] = entries.map { .put(key: keys.log($0.index), value: $0.hash + $0.bytes) }
            success.append(.put(key: keys.head, value: prepared.head.encoded()))
            var checkpoints = [String: UInt64]()
            for e in entries {
                let origin = try LogEntry.decode(e.bytes).origin
                checkpoints[origin.sourceID] = origin.position
            }
            success += checkpoints.map { .put(key: keys.checkpoint($0.key), value: ClusterKeys.u64Bytes($0.value)) }
            if role != .mirror { success.append(.put(key: keys.role, value: Array(WriteRole.mirror.rawValue.utf8))) }
            if sourceTimeNs > 0 {
                success.append(.put(key: keys.sourceTime, value: ClusterKeys.u64Bytes(sourceTimeNs)))
                sourceTimeState.withLockedValue { $0.put = max($0.put, sourceTimeNs) }
            }
            let base = prepared.base
            let r = try await counted {
                try await self.etcd.txn(compare: [
                    self.keys.headIs(base),
                    .modRevision(key: self.keys.role, equals: roleRevision),
                ], success: success, failure: [.range(key: self.keys.head, end: nil, limit: 1), .range(key: self.keys.role, end: nil, limit: 1)])
            }
            if r.succeeded {
                try await committed(at: r.revision, resume: "ask for the head to go on")
                return prepared.head
            }
            // Another append (a second mirror bridge) or a role change came first: apply it
            // and judge again (the entries then no longer follow the head: a conflict).
            commitRetries.increment()
            try await waitApplied(r.ranges.flatMap { $0.map(\.modRevision) }.max() ?? 0)
        }
        throw ClusterError.notApplied("the append lost 1000 rounds to other commits; nothing more of it was committed: retry from the head")
    }

    /// Promote (`promoted`) or demote (`mirror`) the whole cluster: one etcd transaction
    /// that writes the role key if it has not changed since it was read; every write's
    /// transaction compares that key, so no batch commits under the old role after it.
    /// Returns the role before and the cluster's head at the change, once this member has
    /// applied it. Promoting an `open` cluster changes nothing.
    public func changeRole(to target: WriteRole) async throws -> (before: WriteRole, head: Head) {
        for _ in 0..<100 {
            let read = try await counted {
                try await self.etcd.txn(compare: [], success: [.range(key: self.keys.role, end: nil, limit: 1),
                                                             .range(key: self.keys.head, end: nil, limit: 1)], failure: [])
            }
            guard read.ranges.count == 2 else { throw EtcdError.malformed("role read: \(read.ranges.count) answers, expected 2") }
            let roleKV = read.ranges[0].first
            let before = try roleKV.map { try ClusterKeys.role($0.value) } ?? .open
            let head = try read.ranges[1].first.map { try ClusterKeys.head($0.value) } ?? .empty
            if target == .promoted && before == .open {
                try await waitApplied(read.revision)
                return (before, head)
            }
            let r = try await counted {
                try await self.etcd.txn(compare: [.modRevision(key: self.keys.role, equals: roleKV?.modRevision ?? 0)],
                                        success: [.put(key: self.keys.role, value: Array(target.rawValue.utf8))]
                                            // A demoted cluster was the root a moment ago: its replicas'
                                            // root time is now until appends say more.
                                            + (target == .mirror ? [.put(key: self.keys.sourceTime, value: ClusterKeys.u64Bytes(wallClockNanoseconds()))] : [])
                                            + [.range(key: self.keys.head, end: nil, limit: 1)],
                                        failure: [])
            }
            guard r.succeeded else { continue }
            let at = try r.ranges.last?.first.map { try ClusterKeys.head($0.value) } ?? .empty
            try await waitApplied(r.revision)
            return (before, at)
        }
        throw ClusterError.notApplied("the role changed under 100 attempts to change it; nothing was changed by this one: retry")
    }

    /// Counts a write etcd committed at `revision` and waits until this member has applied
    /// it; says how the writer goes on when it has not in time (`resume`).
    private func committed(at revision: Int64, resume: String) async throws {
        commits.increment()
        noteCommitted(revision)
        do {
            try await waitApplied(revision)
        } catch {
            throw ClusterError.notApplied("committed in etcd at revision \(revision) but not applied by this member within \(etcd.timeout): \(error); \(resume)")
        }
    }

    /// The source's checkpoint as etcd holds it (a member may lag behind it).
    public func checkpoint(sourceID: String) async throws -> UInt64? {
        let (kvs, _) = try await counted { try await self.etcd.range(self.keys.checkpoint(sourceID)) }
        return try kvs.first.map { try ClusterKeys.u64($0.value, "checkpoint") }
    }

    private func counted<T>(_ body: () async throws -> T) async throws -> T {
        do { return try await body() } catch let e as EtcdError {
            etcdErrors.increment()
            throw e
        }
    }

    /// Returns once the store has applied etcd revision `revision`; throws after the etcd
    /// timeout.
    func waitApplied(_ revision: Int64) async throws {
        let (id, stream, _) = revisionWatcher.subscribe()
        defer { revisionWatcher.unsubscribe(id) }
        if self.revision >= revision { return }
        let timeout = etcd.timeout
        let done = await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                for await _ in stream where self.revision >= revision { return true }
                return false
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
        guard done else {
            throw ClusterError.notApplied("this member has applied etcd revision \(self.revision), not \(revision), within \(timeout): its applier is behind or not following (\(status.detail))")
        }
    }

    /// When this member last heard from etcd's quorum (ns since the epoch): a catch-up
    /// read, a watch event (every member's `applied/` write makes one every 2 s), or its
    /// own `applied/` write committed. It is the root time the member's replicas judge
    /// staleness by, so a member cut off from etcd goes stale for them as it would for a
    /// writer (docs/ha.md).
    public var lastWordNs: UInt64 { lastWord.withLockedValue { $0 } }
    private let lastWord = NIOLockedValueBox<UInt64>(0)

    /// The root time this member's replicas see: while the cluster mirrors a source root,
    /// the source's freshest word as etcd carries it (`source-time`), so they age when the
    /// source dies, as a single mirror's replicas do; otherwise `lastWordNs`.
    public var rootTimeNs: UInt64 {
        roleState.withLockedValue { $0.role } == .mirror ? sourceTimeState.withLockedValue { $0.applied } : lastWordNs
    }

    /// The source root's time applied from etcd, the last this member put there, and when
    /// (by this member's clock) the applied time last advanced.
    private let sourceTimeState = NIOLockedValueBox<(applied: UInt64, put: UInt64, advancedAtNs: UInt64)>((0, 0, 0))

    func applySourceTime(_ kv: EtcdKV) throws {
        let t = try ClusterKeys.u64(kv.value, "source time")
        let now = wallClockNanoseconds()
        sourceTimeState.withLockedValue {
            // Moved by a bridge writing to another member: not this member's own puts.
            if t > $0.applied && t > $0.put { $0.advancedAtNs = now }
            $0.applied = max($0.applied, t)
        }
    }

    /// Seconds since a mirror bridge writing to another member last moved the source's time
    /// (`source-time`, put by its appends and by its probes while the source is quiet),
    /// by this member's clock; nil when it never did since this member started. A
    /// bridge writing to another member feeds this one as much.
    public func sourceFedAge(nowNs: UInt64) -> Double? {
        let at = sourceTimeState.withLockedValue { $0.advancedAtNs }
        guard at > 0 else { return nil }
        return nowNs > at ? Double(nowNs - at) / 1e9 : 0
    }

    /// A quiet mirror bridge's probe passes on its source root's time: put in etcd for
    /// every member, at most once a second from this member.
    public func noteSourceTime(_ ns: UInt64) async throws {
        let due = sourceTimeState.withLockedValue { s -> Bool in
            guard ns >= s.put + 1_000_000_000 else { return false }
            s.put = ns
            return true
        }
        guard due, roleState.withLockedValue({ $0.role }) == .mirror else { return }
        _ = try await counted { try await self.etcd.txn(compare: [], success: [.put(key: self.keys.sourceTime, value: ClusterKeys.u64Bytes(ns))], failure: []) }
    }

    func heard() {
        let now = wallClockNanoseconds()
        lastWord.withLockedValue { $0 = max($0, now) }
    }

    func noteApplied(_ revision: Int64, head: Head?) {
        heard()
        let (was, now) = appliedRevision.withLockedValue { r in
            defer { r = max(r, revision) }
            return (r, max(r, revision))
        }
        lag.withLockedValue { $0.applied(now, advanced: now > was) }
        revisionWatcher.publish()
        if let head {
            appliedIndex.record(Double(head.index))
            watcher.publish()
        }
    }
}
