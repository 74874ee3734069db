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
        // The first round at once: readiness waits for the node id's claim (`duplicate`).
        var first = true
        while !Task.isCancelled {
            if !first { try? await Task.sleep(for: Self.appliedInterval) }
            first = false
            guard state.withLockedValue({ $0.following }) else { continue }
            do {
                let local = try await store.head()
                // The key lives on a lease: a member stopped (or cut off) for longer than
                // its TTL no longer holds the window open, and catches up from a peer's
                // snapshot when it returns behind it.
                let lease = try await etcd.grantLease(ttl: appliedTTL)
                // Another live process with this node id: its applied/ key is left to it.
                guard try await claimNodeID(lease: lease) else { continue }
                let clock = wallClockNanoseconds()
                let r = try await etcd.txn(compare: [], success: [
                    .putLeased(key: keys.applied(nodeID), value: ClusterKeys.u64Bytes(local.index), lease: lease),
                    .range(key: keys.appliedPrefix, end: etcdPrefixEnd(keys.appliedPrefix), limit: 0),
                    .range(key: keys.head, end: nil, limit: 1),
                    .putLeased(key: keys.clock(nodeID), value: ClusterKeys.u64Bytes(clock), lease: lease),
                    .range(key: keys.clockPrefix, end: etcdPrefixEnd(keys.clockPrefix), limit: 0),
                ], failure: [])
                if r.ranges.count == 5 { noteClocks(r.ranges[4], own: clock) }
                // Known before the quorum flag goes, so /readyz has no moment of 200 while
                // the watch has yet to deliver it.
                noteCommitted(r.revision, appliedWrite: true)
                quorum.withLockedValue { $0 = nil }
                heard()
                guard r.ranges.count == 5, let headKV = r.ranges[2].first else { continue }
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

    /// The members' clocks as their last `clock/` writes said (each written at most one
    /// `applied/` interval ago, so each is behind that member's clock now): the slowest,
    /// and never ahead of this member's, is what the purge judges expiry by.
    /// While no other member's clock is there (they stopped, or are cut off), the skew last
    /// seen (this clock minus the slowest other) still counts: a member whose clock runs
    /// ahead, left alone, does not purge early.
    func noteClocks(_ kvs: [EtcdKV], own: UInt64) {
        let mine = keys.clock(nodeID)
        let others = kvs.filter { $0.key != mine }.compactMap { kv in
            (try? ClusterKeys.u64(kv.value, "clock")).map { (id: String(decoding: kv.key.dropFirst(keys.clockPrefix.count), as: UTF8.self), ns: $0) }
        }
        let slowest = others.min { $0.ns < $1.ns }
        let (clock, skew) = purgeClock.withLockedValue { c -> (UInt64, UInt64) in
            if let slowest { c.skew = own > slowest.ns ? own - slowest.ns : 0 }
            c.ns = own - min(c.skew, own)
            c.slowestMember = slowest.map(\.id) ?? c.slowestMember
            return (c.ns, c.skew)
        }
        if skew > 60_000_000_000 {
            etcdLog.log(logger, .warning, "cluster: the expiry purge runs behind this member's clock: another member's clock is behind it",
                        budget: "purge-clock", metadata: ["behind-seconds": "\(skew / 1_000_000_000)", "member": "\(slowest?.id ?? "(last seen)")",
                                                         "purge-clock-ns": "\(clock)"])
        }
    }

    /// The time the expiry purge judges records by (seconds since the epoch): the slowest
    /// live member's clock as last written (`clock/`), this member's own when later; nil
    /// before the first `applied/` write. Members purge by their own clocks otherwise, and
    /// the fastest one would delete records the others still serve.
    public var purgeNowSeconds: UInt64? {
        purgeClock.withLockedValue { $0.ns == 0 ? nil : min($0.ns / 1_000_000_000, wallClockSeconds()) }
    }

    /// Which member on disk a claim is (its host and data directory: the part before " | ").
    static func claimant(_ value: [UInt8]) -> ArraySlice<UInt8> {
        let rest = value.drop { $0 != UInt8(ascii: " ") }.dropFirst()
        return rest.firstRange(of: Array(" | ".utf8)).map { rest[..<$0.lowerBound] } ?? rest
    }

    /// A claim's description for the operator: printable, at most 300 characters.
    static func describe(claim value: [UInt8]) -> String {
        let text = value.drop { $0 != UInt8(ascii: " ") }.dropFirst().prefix(300).map { $0 >= 0x20 && $0 < 0x7F ? Character(UnicodeScalar($0)) : "?" }
        return String(text) + (value.count > 300 ? "…" : "")
    }

    /// Renews this process's claim on its node id (`claims/<id>`, on `lease`), or takes it
    /// when nobody holds it. False while another live process holds it — its claim renewed
    /// since this member last read it: a data directory copied from a member carries that
    /// member's id, and two processes writing one `applied/` key would let compaction pass
    /// the one behind. A claim left by this member's previous run is not renewed and ends
    /// with its lease (at most `--etcd-applied-ttl`); meanwhile the member goes on as usual.
    func claimNodeID(lease: Int64) async throws -> Bool {
        let key = keys.claim(nodeID)
        let r = try await etcd.txn(compare: [.value(key: key, equals: claimValue)],
                                   success: [.putLeased(key: key, value: claimValue, lease: lease)],
                                   failure: [.range(key: key, end: nil, limit: 1)])
        // This member's previous run (same host, same data directory; another pid), seen
        // unrenewed since the last read (a live process with the same host name and path —
        // containers, cloned machines — renews it and is told apart as any other): taken
        // over then, before a copy waiting for the id's end could take it.
        if !r.succeeded, let theirs = r.ranges.first?.first, Self.claimant(theirs.value) == Self.claimant(claimValue),
           duplicate.withLockedValue({ $0.seen?.modRevision == theirs.modRevision && $0.seen?.value == theirs.value }),
           try await etcd.txn(compare: [.value(key: key, equals: theirs.value)],
                              success: [.putLeased(key: key, value: claimValue, lease: lease)], failure: []).succeeded {
            duplicate.withLockedValue { $0 = (nil, nil, false) }
            return true
        }
        guard !r.succeeded, let theirs = r.ranges.first?.first else {
            if !r.succeeded {
                _ = try await etcd.txn(compare: [.absent(key: key)], success: [.putLeased(key: key, value: claimValue, lease: lease)], failure: [])
            }
            if let was = duplicate.withLockedValue({ d -> String? in defer { d = (nil, nil, false) }; return d.holder }) {
                logger.notice("cluster: the other process with this member's node id is gone; this member takes its place again",
                              metadata: ["node-id": "\(nodeID)", "was": "\(was)"])
            }
            return true
        }
        let holder: String? = duplicate.withLockedValue { d in
            defer { d.seen = theirs }
            // Written since it was last read (renewed, or claimed anew): a live process.
            // Seen for the first time, or unchanged: not known to be live yet (judged at
            // the next read, the member not ready meanwhile).
            if let seen = d.seen {
                if seen.modRevision != theirs.modRevision { d.holder = Self.describe(claim: theirs.value) }
                d.judging = false
            }
            return d.holder
        }
        guard let holder else { return true }
        etcdLog.log(logger, .error, "cluster: another live process holds this member's node id (its data directory was copied from a member): this member takes no writes and leaves the id's applied/ key to it; start it again with an empty --data",
                    budget: "duplicate", metadata: ["node-id": "\(nodeID)", "holder": "\(holder)"])
        return false
    }
}
