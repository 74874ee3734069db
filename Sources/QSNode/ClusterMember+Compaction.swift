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

/// Compaction: the cluster's `log/` keys behind every member's applied index and the
/// window are deleted.
extension ClusterMember {
    /// How long a member's `applied/` key outlives its last write: the default of
    /// `--etcd-applied-ttl`.
    public static let appliedTTL: Duration = .seconds(10)
    /// How often a member writes its `applied/` key (and compacts etcd's log keys).
    public static let appliedInterval: Duration = .seconds(2)

    /// A watch that delivers nothing this long is stuck (every member writes its `applied/`
    /// key every `appliedInterval`) and is left for the next etcd URL.
    static func watchQuietLimit(_ timeout: Duration) -> Duration { appliedInterval * 3 + timeout }

    /// Every few seconds: says how far this member has applied, and deletes the `log/`
    /// keys every member has applied and that are older than the window.
    func compactUntilCancelled() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: Self.appliedInterval)
            guard state.withLockedValue({ $0.following }) else { continue }
            do {
                let local = try await store.head()
                // The key lives on a lease: a member stopped (or cut off) for longer than
                // its TTL no longer holds the window open, and catches up from a peer's
                // snapshot when it returns behind it.
                let lease = try await etcd.grantLease(ttl: appliedTTL)
                let r = try await etcd.txn(compare: [], success: [
                    .putLeased(key: keys.applied(nodeID), value: ClusterKeys.u64Bytes(local.index), lease: lease),
                    .range(key: keys.appliedPrefix, end: etcdPrefixEnd(keys.appliedPrefix), limit: 0),
                    .range(key: keys.head, end: nil, limit: 1),
                ], failure: [])
                // Known before the quorum flag goes, so /readyz has no moment of 200 while
                // the watch has yet to deliver it.
                noteCommitted(r.revision, appliedWrite: true)
                quorum.withLockedValue { $0 = nil }
                heard()
                guard r.ranges.count == 3, let headKV = r.ranges[2].first else { continue }
                let clusterHead = try ClusterKeys.head(headKV.value)
                let lowest = try r.ranges[1].map { try ClusterKeys.u64($0.value, "applied index") }.min() ?? local.index
                let keepFrom = min(lowest + 1, clusterHead.index > window ? clusterHead.index - window + 1 : 1)
                if keepFrom > 1 {
                    _ = try await etcd.txn(compare: [], success: [.deleteRange(key: keys.log(0), end: keys.log(keepFrom))], failure: [])
                }
            } catch let error as EtcdError {
                lag.withLockedValue { $0.appliedWriteFailed() }
                quorum.withLockedValue { $0 = "\(error)" }
                etcdLog.log(logger, .warning, "etcd did not commit this member's applied index", budget: "applied", metadata: ["error": "\(error)"])
            } catch {
                logger.debug("cluster log compaction skipped", metadata: ["error": "\(error)"])
            }
        }
    }
}
