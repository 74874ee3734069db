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

/// Applying: the member follows the cluster's committed log from etcd into its store, in
/// order (docs/ha.md).
extension ClusterMember {
    public func run() async throws {
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await self.applyUntilCancelled() }
                group.addTask { await self.compactUntilCancelled() }
            }
        }
    }

    private func applyUntilCancelled() async {
        while !Task.isCancelled {
            do {
                let revision = try await catchUp()
                state.withLockedValue { $0 = (true, "following the cluster's log from etcd revision \(revision)") }
                try await follow(from: revision + 1)
            } catch is CancellationError {
                return
            } catch let error as ClusterError {
                if case .behind = error, !peers.isEmpty {
                    state.withLockedValue { $0 = (false, "\(error); catching up from a peer's snapshot") }
                    logger.warning("cluster member behind etcd's retained log: catching up from a peer's snapshot",
                                   metadata: ["error": "\(error)", "peers": "\(peers.map(\.description).joined(separator: ","))"])
                    if await catchUpFromPeer() { continue }
                    // No peer could give a snapshot: try again in a while.
                    try? await Task.sleep(for: .seconds(5))
                    continue
                }
                state.withLockedValue { $0 = (false, "\(error)") }
                logger.critical("cluster member cannot apply the cluster's log: it serves what it has and takes no writes",
                                metadata: ["error": "\(error)"])
                if case .corrupt = error {} else { return }
            } catch {
                if Task.isCancelled { return }
                etcdErrors.increment()
                state.withLockedValue { $0 = (false, "not following etcd: \(error)") }
                if case EtcdError.unauthenticated = error {
                    etcdLog.log(logger, .error, "cluster log: etcd refuses this member's credentials; it serves what it has and takes no writes until etcd takes them",
                                budget: "credentials", metadata: ["error": "\(error)"])
                } else {
                    etcdLog.log(logger, .warning, "cluster log: lost etcd, catching up again", budget: "lost", metadata: ["error": "\(error)"])
                }
            }
            try? await Task.sleep(for: .milliseconds(500))
        }
    }

    /// Replaces the store's contents with the snapshot of the first peer that gives one
    /// continuing this member's history (`Store.installSnapshot` checks the chain and that
    /// the snapshot holds this member's head); the applier then catches up from etcd from
    /// the snapshot's head. False when no peer gave one.
    func catchUpFromPeer() async -> Bool {
        for peer in peers {
            do {
                let mine = try await store.head()
                let head = try await store.installSnapshot(continuing: mine.index > 0 ? mine : nil) { file in
                    let begin = try await receiveSnapshot(from: peer, token: self.peerToken, group: MultiThreadedEventLoopGroup.singleton,
                                                          into: file, checkRoom: { try checkSnapshotRoom(self.store, for: $0, held: $1) }, logger: self.logger)
                    return Head(index: begin.index, hash: begin.hash, commitTimeNs: 0)
                }
                snapshotCatchUps.increment()
                watcher.publish()
                appliedIndex.record(Double(head.index))
                logger.notice("cluster member caught up from a peer's snapshot; following etcd from there",
                              metadata: ["peer": "\(peer)", "was-index": "\(mine.index)", "now-index": "\(head.index)"])
                return true
            } catch is CancellationError {
                return false
            } catch {
                logger.warning("snapshot from a peer failed", metadata: ["peer": "\(peer)", "error": "\(error)"])
            }
        }
        return false
    }

    /// Reads what the store lacks by range (head, checkpoints and log entries at one
    /// revision) and applies it; returns the revision the store then stands at.
    func catchUp() async throws -> Int64 {
        while true {
            let local = try await store.head()
            let r = try await etcd.txn(compare: [], success: [
                .range(key: keys.head, end: nil, limit: 1),
                .range(key: keys.checkpointPrefix, end: etcdPrefixEnd(keys.checkpointPrefix), limit: 0),
                .range(key: keys.log(local.index + 1), end: etcdPrefixEnd(keys.logPrefix), limit: 1000),
                .range(key: keys.role, end: nil, limit: 1),
                .range(key: keys.sourceTime, end: nil, limit: 1),
                .range(key: keys.sourcesSeen, end: nil, limit: 1),
            ], failure: [])
            guard r.ranges.count == 6 else { throw EtcdError.malformed("catch-up read: \(r.ranges.count) answers, expected 6") }
            if let kv = r.ranges[4].first { try applySourceTime(kv, moved: false) }
            applySourcesSeen(r.ranges[5].first?.value, revision: r.ranges[5].first?.modRevision ?? r.revision)
            sourcesSeenLoaded.withLockedValue { $0 = true }
            let clusterHead = try r.ranges[0].first.map { try ClusterKeys.head($0.value) } ?? .empty
            if clusterHead.index < local.index || (clusterHead.index == local.index && clusterHead.hash != local.hash) {
                throw ClusterError.diverged("this member's store stands at index \(local.index) (hash \(hexString(local.hash))), the cluster's head is \(clusterHead.index) (hash \(hexString(clusterHead.hash))): start the member on an empty --data, or on a copy of a member's")
            }
            let entries = try r.ranges[2].compactMap { kv in try keys.logIndex(kv.key).map { try keys.entry(index: $0, value: kv.value) } }
            if let first = entries.first, first.index != local.index + 1 {
                throw ClusterError.behind("this member stands at index \(local.index), etcd keeps entries from \(first.index) on: catch up from a member's snapshot (docs/ha.md)")
            }
            if entries.isEmpty && clusterHead.index > local.index {
                throw ClusterError.behind("this member stands at index \(local.index), the cluster's head is \(clusterHead.index) and etcd keeps no entry after it: catch up from a member's snapshot (docs/ha.md)")
            }
            let complete = (entries.last?.index ?? local.index) >= clusterHead.index
            var checkpoints = [String: UInt64]()
            var role: (WriteRole, Int64)?
            if complete {
                for kv in r.ranges[1] { if let sid = keys.sourceID(kv.key) { checkpoints[sid] = try ClusterKeys.u64(kv.value, "checkpoint of \(sid)") } }
                let kv = r.ranges[3].first
                role = (try kv.map { try ClusterKeys.role($0.value) } ?? .open, kv?.modRevision ?? 0)
            }
            let head = try await applyCommitted(entries, checkpoints, role: role)
            if complete {
                noteApplied(r.revision, head: head)
                logger.info("cluster log caught up", metadata: ["head-index": "\(head.index)", "revision": "\(r.revision)"])
                return r.revision
            }
        }
    }

    /// Applies each revision the watch delivers in one store transaction, in order.
    func follow(from revision: Int64) async throws {
        // Every member writes its applied/ key every appliedInterval: a watch quiet for three
        // of them is stuck on an etcd member that stopped answering.
        try await etcd.watch(keys.prefix, end: etcdPrefixEnd(keys.prefix), fromRevision: revision,
                             quietLimit: Self.watchQuietLimit(etcd.timeout)) { rev, events in
            var entries = [StoredEntry]()
            var checkpoints = [String: UInt64]()
            var role: (WriteRole, Int64)?
            for e in events where e.kv.key == self.keys.role {
                role = (e.kind == .put ? try ClusterKeys.role(e.kv.value) : .open, e.kind == .put ? e.kv.modRevision : 0)
            }
            for e in events where e.kind == .put && e.kv.key == self.keys.sourceTime { try self.applySourceTime(e.kv) }
            for e in events where e.kv.key == self.keys.sourcesSeen {
                self.applySourcesSeen(e.kind == .put ? e.kv.value : nil, revision: e.kind == .put ? e.kv.modRevision : rev)
            }
            for e in events where e.kind == .put {
                if let i = self.keys.logIndex(e.kv.key) {
                    entries.append(try self.keys.entry(index: i, value: e.kv.value))
                } else if let sid = self.keys.sourceID(e.kv.key) {
                    checkpoints[sid] = try ClusterKeys.u64(e.kv.value, "checkpoint of \(sid)")
                }
            }
            entries.sort { $0.index < $1.index }
            if entries.isEmpty && checkpoints.isEmpty && role == nil {
                self.noteApplied(rev, head: nil)
            } else {
                self.noteApplied(rev, head: try await self.applyCommitted(entries, checkpoints, role: role))
            }
            return !Task.isCancelled
        }
    }

    private func applyCommitted(_ entries: [StoredEntry], _ checkpoints: [String: UInt64], role: (WriteRole, Int64)? = nil) async throws -> Head {
        do {
            let head = try await store.applyCommitted(entries: entries, checkpoints: checkpoints, role: role?.0)
            if let role {
                let was = roleState.withLockedValue { state in
                    defer { state = (role.0, role.1) }
                    return state.role
                }
                if was != role.0 {
                    logger.notice("cluster write role applied", metadata: ["role": "\(role.0.rawValue)", "was": "\(was.rawValue)", "revision": "\(role.1)"])
                }
            }
            return head
        } catch let e as AppendError {
            if case .notNext = e { throw ClusterError.behind("\(e)") }
            throw ClusterError.diverged("\(e)")
        }
    }
}
