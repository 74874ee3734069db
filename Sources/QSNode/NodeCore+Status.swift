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

/// `status`: what the node says of itself (role, head, log window, checkpoints, upstream,
/// mirror, writers, and whether its writes fail), as `qsctl status` and bridges read it.
extension NodeCore {
    /// The node's status as JSON: role, head, log window, checkpoints with their lag where
    /// the position is a KT timestamp, upstream and freshness.
    func statusJSON() async throws -> String {
        let (head, window, checkpoints, nodeID, writeRole, copying, descriptors) = try await store.read { txn in
            let cps = try txn.checkpoints()
            let copying = Set(try cps.keys.filter { try txn.copyCursor(sourceID: $0) != nil })
            return (try txn.head(), try txn.logWindow(), cps, try txn.identity(), try txn.writeRole(), copying, try txn.descriptors())
        }
        let nowNs = wallClockNanoseconds()
        // Which KT sources have a writer on this node: a lag that grows with none says the
        // bridge is down or the source retired (a mirror's and a cluster member's writers
        // are elsewhere, so they say nothing of it).
        let writing = writable && writeRole != .mirror && cluster == nil ? writers.sourceIDs : nil
        var sources = [[String: Any]]()
        for (sid, cp) in checkpoints.sorted(by: { $0.key < $1.key }) {
            var s: [String: Any] = ["source_id": sid, "checkpoint": cp]
            // An initial copy in progress: the checkpoint counts its pages, not a source position.
            if copying.contains(sid) { s["initial_copy"] = true }
            // KT timestamps are milliseconds × 10^6 plus a counter: a wall time.
            if SourcePosition.isKTTimestamp(cp), !copying.contains(sid) {
                let t = (cp / 1_000_000) * 1_000_000
                s["source_time_ns"] = t
                s["lag_seconds"] = nowNs > t ? Double(nowNs - t) / 1e9 : 0
                if let writing { s["writer_connected"] = writing.contains(sid) }
            }
            sources.append(s)
        }
        var out: [String: Any] = [
            "node_id": nodeID,
            "role": writable ? "root" : "replica",
            "head": ["index": head.index, "hash": hexString(head.hash), "commit_time_ns": head.commitTimeNs],
            "log_first_index": window.firstIndex,
            "compatible_mirror": writeRole == .mirror,
            "write_role": writable ? writeRole.rawValue : "replica",
            "sources": sources,
            "subscribers": watcher.subscriberCount,
        ]
        // A root cluster's member says so: a writer whose first --root address does not
        // answer takes another member (one log through etcd) without having seen a position.
        if let cluster { out["cluster"] = cluster.keys.cluster }
        // Each source's recorded descriptor (its writer's mapping); the key itself tells a
        // writer this node records them (`Request.setDescriptor`). A cluster member lists
        // them as it has applied the cluster's log; `setDescriptor` judges at etcd's head.
        out["source_descriptors"] = descriptors
        if writable {
            let t = rootTimeNs
            if t > 0 { out["root_age_seconds"] = nowNs > t ? Double(nowNs - t) / 1e9 : 0 }
        } else {
            let u = upstreamStatus
            if let age = u.rootAgeSeconds { out["root_age_seconds"] = age }
            // The distance as last heard: a replica cut off keeps its last figure, and
            // `heard_seconds_ago` (when the upstream's head last came, by this node's clock)
            // says how old it is.
            // Nothing heard yet from this upstream (just moved to it, or refused): its head
            // and the distance are unknown (null), not the last upstream's.
            let heard = u.upstreamHeardNs > 0
            var up: [String: Any] = ["subscribed": u.subscribed, "head": heard ? u.upstreamHead : NSNull(),
                                     "lag_entries": heard ? u.lagEntries : NSNull()]
            if heard { up["heard_seconds_ago"] = nowNs > u.upstreamHeardNs ? Double(nowNs - u.upstreamHeardNs) / 1e9 : 0 }
            if let a = u.upstream { up["address"] = a }
            out["upstream"] = up
        }
        out["writers"] = writers.json(nowNs: nowNs)
        if writeRole == .mirror {
            var mirror = writers.mirrorStatus(nowNs: nowNs)
            // A cluster's mirror bridge writes to one member; the others learn of it
            // through etcd (the source time it moves), and are fed as much.
            // Unknown (a cluster member not yet caught up with etcd, a store that cannot be
            // read): said, so that promote does not take it for "no source known".
            if let seen = sourcesSeen() { mirror["sources_seen"] = seen } else { mirror["sources_seen_unknown"] = true }
            if let cluster, mirror["following"] as? Bool != true, let age = cluster.sourceFedAge(nowNs: nowNs), age <= Writers.liveSeconds {
                mirror["following"] = true
                mirror["through_cluster"] = true
                mirror["source_time_moved_seconds_ago"] = age
            }
            out["mirror"] = mirror
        }
        // What /readyz says about the store's writes, so the two never disagree: a root
        // whose disk is full keeps its write role but commits nothing.
        if let failing = store.writeHealth.failing {
            out["writes_failing"] = ["failure": failing.failure.rawValue, "message": failing.message,
                                     "since_ns": failing.sinceNs, "remedy": failing.failure.remedy]
        } else if let cluster, case let s = cluster.status, !s.following {
            // A cluster member that does not follow etcd (cut off, no quorum, its
            // credentials refused) commits nothing, whatever its write role says.
            out["writes_failing"] = ["failure": "root cluster", "message": s.detail,
                                     "remedy": "the member takes no writes until it follows etcd again (its /readyz says the same; docs/ha.md)"]
        }
        let data = try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys])
        return String(decoding: data, as: UTF8.self)
    }
}
