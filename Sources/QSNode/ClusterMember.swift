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
    /// `judging` until the claim is known to be this process's, nobody's, or another's read
    /// twice (renewed between: a live holder; not: a stale claim): `/readyz` says not ready
    /// meanwhile, so a copy never answers ready before it is found out.
    let duplicate = NIOLockedValueBox<(seen: EtcdKV?, holder: String?, judging: Bool)>((nil, nil, true))
    /// 1 while another live process holds this member's node id.
    let nodeIDConflict: Gauge
    /// The slowest member's clock (ns) as read at the last `applied/` write (`purgeNowSeconds`).
    let purgeClock = NIOLockedValueBox<(ns: UInt64, skew: UInt64, slowestMember: String?)>((0, 0, nil))
    /// How far the purge's clock is behind this member's (s), at a scrape.
    let purgeClockBehind: Gauge

    public init(etcd: EtcdClient, cluster: String, store: Store, watcher: LogWatcher, nodeID: String,
                window: UInt64, appliedTTL: Duration = ClusterMember.appliedTTL, peers: [Endpoint] = [], peerToken: [UInt8] = [],
                maxRequestBytes: Int = ClusterMember.etcdMaxRequestBytes, instance: String = "", logger: Logger,
                factory: any MetricsFactory = MetricsSystem.factory) {
        var nonce = SystemRandomNumberGenerator()
        claimValue = Array((String(nonce.next(), radix: 16) + " " + instance).utf8)
        nodeIDConflict = Gauge(label: "qs_cluster_node_id_conflict", factory: factory)
        purgeClockBehind = Gauge(label: "qs_cluster_purge_clock_behind_seconds", factory: factory)
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
            return (false, "another live process holds this member's node id \(nodeID) in etcd (\(holder)); this one is \(Self.describe(claim: claimValue)): two data directories carry one node id, one copied from the other. Stop the copy, move its --data aside and start it with an empty directory: it takes a snapshot from a peer and an id of its own")
        }
        let s = state.withLockedValue { $0 }
        guard s.following else { return s }
        if let seen = duplicate.withLockedValue({ $0.judging ? $0.seen : nil }) {
            return (false, "another process's claim on this member's node id \(nodeID) is in etcd (\(Self.describe(claim: seen.value))); waiting one renewal interval (\(Self.appliedInterval)) to see whether that process is alive")
        }
        if duplicate.withLockedValue({ $0.judging }) {
            return (false, "checking in etcd that no other process holds this member's node id \(nodeID)")
        }
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
        if let purge = purgeNowSeconds { purgeClockBehind.record(Double(wallClockSeconds() &- min(purge, wallClockSeconds()))) }
        let now = (tokens: etcd.tokens, refusals: etcd.authenticationsRefused)
        let new = etcdCounted.withLockedValue { counted in
            defer { counted = now }
            return (tokens: now.tokens - counted.tokens, refusals: now.refusals - counted.refusals)
        }
        if new.tokens > 0 { etcdTokens.increment(by: Int64(new.tokens)) }
        if new.refusals > 0 { etcdAuthRefusals.increment(by: Int64(new.refusals)) }
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
                                            // A promoted cluster's earlier sources were checked by
                                            // this promote: a later mirroring names its own.
                                            + (target == .promoted ? [.deleteRange(key: self.keys.sourcesSeen, end: etcdPrefixEnd(self.keys.sourcesSeen))] : [])
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
    func committed(at revision: Int64, resume: String) async throws {
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

    func counted<T>(_ body: () async throws -> T) async throws -> T {
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
    let sourceTimeState = NIOLockedValueBox<(applied: UInt64, put: UInt64, advancedAtNs: UInt64)>((0, 0, 0))

    /// `moved`: a put the watch delivered (the source's time moving now); the catch-up's
    /// read at start is only where it stands (a member just restarted is not fed by it).
    func applySourceTime(_ kv: EtcdKV, moved: Bool = true) throws {
        let t = try ClusterKeys.u64(kv.value, "source time")
        let now = wallClockNanoseconds()
        sourceTimeState.withLockedValue {
            // Moved by a bridge writing to another member: not this member's own puts.
            if moved && t > $0.applied && t > $0.put { $0.advancedAtNs = now }
            $0.applied = max($0.applied, t)
        }
    }

    /// The roots mirror bridges said they read through any member, as etcd holds them
    /// (`ClusterKeys.sourcesSeen`), newest last; nil until this member has read them from
    /// etcd (its catch-up at start): an empty list would say no source is known.
    public var sourcesSeen: [String]? { sourcesSeenLoaded.withLockedValue { $0 } ? sourcesSeenState.withLockedValue { $0.list } : nil }
    let sourcesSeenLoaded = NIOLockedValueBox(false)
    /// The list as applied or written by this member, and the key's revision then (0: absent).
    let sourcesSeenState = NIOLockedValueBox<(list: [String], revision: Int64)>(([], 0))

    /// A put of `sources-seen` (its value) or a delete (nil) from the watch or the catch-up.
    func applySourcesSeen(_ value: [UInt8]?, revision: Int64) {
        let list = value.map(Writers.decodeSeen) ?? []
        sourcesSeenState.withLockedValue { if revision >= $0.revision { $0 = (list, revision) } }
    }

    /// A compatible bridge's hello through this member named `source`: made the newest of
    /// the cluster's list in etcd, in one transaction compared on the key's revision as this
    /// member knows it (read again and retried when another member changed it meanwhile).
    /// Throws when etcd does not take it: the hello is refused and the bridge tries again.
    public func noteSourceSeen(_ source: String) async throws {
        guard sourcesSeenLoaded.withLockedValue({ $0 }) else {
            throw ClusterError.notApplied("this member has not read the cluster's list of the roots mirror bridges read from etcd yet (it is catching up)")
        }
        var (current, revision) = sourcesSeenState.withLockedValue { $0 }
        for _ in 0..<5 {
            guard current.last != source else { return }
            let next = Writers.adding(source, to: current)
            let unchanged: EtcdCompare = revision > 0 ? .modRevision(key: keys.sourcesSeen, equals: revision) : .absent(key: keys.sourcesSeen)
            let r = try await counted {
                try await self.etcd.txn(compare: [unchanged], success: [.put(key: self.keys.sourcesSeen, value: Writers.encodeSeen(next))],
                                        failure: [.range(key: self.keys.sourcesSeen, end: nil, limit: 1)])
            }
            if r.succeeded {
                applySourcesSeen(Writers.encodeSeen(next), revision: r.revision)
                return
            }
            let kv = r.ranges.first?.first
            (current, revision) = (kv.map { Writers.decodeSeen($0.value) } ?? [], kv?.modRevision ?? 0)
            applySourcesSeen(kv?.value, revision: revision)
        }
        throw ClusterError.notApplied("the cluster's list of the roots mirror bridges read (sources-seen in etcd) changed under five attempts to add \(source)")
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
