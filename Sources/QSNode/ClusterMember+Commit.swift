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

/// Committing through etcd: batches, conditional writes, purge steps and compatible appends,
/// each one etcd transaction comparing what it was prepared against, then applied by this
/// member before it is answered.
extension ClusterMember {
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

    /// Records a source's descriptor for the whole cluster (`Request.setDescriptor`): judged
    /// at the cluster's head (this member first applies up to etcd's head, role and the
    /// source's checkpoint, so a member that lags does not answer from an older descriptor
    /// or role), and when it records, its version-3
    /// entry is committed through one etcd transaction comparing the head it follows and the
    /// write role, like a batch's but moving no checkpoint. Members that commit at once: the
    /// first wins, the others judge again at the new head (then `unchanged` or `differs`).
    public func setDescriptor(sourceID: String, descriptor: String, replace: Bool) async throws -> StoreTransaction.DescriptorOutcome {
        let start = ContinuousClock.now
        try await applyCurrent(sourceID: sourceID)
        for _ in 0..<1000 {
            try Task.checkCancellation()
            let roleRevision = roleState.withLockedValue { $0.revision }
            let p = try await store.prepareDescriptor(sourceID: sourceID, descriptor: descriptor, replace: replace)
            guard let e = p.entry else { return p.outcome }
            try checkFits(entryBytes: e.hash.count + e.bytes.count, what: "the descriptor's log entry")
            let r = try await counted {
                try await self.etcd.txn(compare: [self.keys.headIs(p.base), .modRevision(key: self.keys.role, equals: roleRevision)],
                                        success: [.put(key: self.keys.log(e.index), value: e.hash + e.bytes),
                                                  .put(key: self.keys.head, value: p.head.encoded())],
                                        failure: [.range(key: self.keys.head, end: nil, limit: 1), .range(key: self.keys.role, end: nil, limit: 1)])
            }
            if r.succeeded {
                try await committed(at: r.revision, resume: "ask the root's status whether it holds the descriptor")
                commitSeconds.recordSeconds((ContinuousClock.now - start).seconds)
                return p.outcome
            }
            // Another member committed first, or the role changed: apply that, judge again.
            commitRetries.increment()
            try await waitApplied(r.ranges.flatMap { $0.map(\.modRevision) }.max() ?? 0)
        }
        throw ClusterError.notApplied("the descriptor lost 1000 rounds to other members' commits; it was not recorded: retry")
    }

    /// The descriptor the cluster holds for `sourceID` at etcd's head (nil: none), read
    /// from this member's store once it has applied up to there: a writer asks it rather
    /// than trust a status listing that may lag.
    public func descriptor(sourceID: String) async throws -> String? {
        try await applyCurrent(sourceID: sourceID)
        return try await store.descriptor(sourceID: sourceID)
    }

    /// Applies up to the cluster's head, role and `sourceID`'s checkpoint, read at one
    /// revision: a descriptor is then judged under the role its commit will be compared
    /// with, and its entry carries the checkpoint as it stands (a batch of identical writes
    /// moves only the checkpoint).
    private func applyCurrent(sourceID: String) async throws {
        let now = try await counted {
            try await self.etcd.txn(compare: [], success: [.range(key: self.keys.head, end: nil, limit: 1),
                                                           .range(key: self.keys.role, end: nil, limit: 1),
                                                           .range(key: self.keys.checkpoint(sourceID), end: nil, limit: 1)],
                                    failure: [])
        }
        try await waitApplied(now.ranges.flatMap { $0.map(\.modRevision) }.max() ?? 0)
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
                let entry = try LogEntry.decode(e.bytes)
                // A descriptor's entry moves no checkpoint (docs/protocol.md).
                if entry.movesCheckpoint { checkpoints[entry.origin.sourceID] = entry.origin.position }
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
}
