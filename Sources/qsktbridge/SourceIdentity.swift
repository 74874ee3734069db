import Foundation
import Logging
import QSFeed
import QSModel
import QSNet

extension KTSource {
    /// The checkpoint name when --source-id is not given. KT tells nothing stable about
    /// itself (its report and replication stream carry no server identity), so a live
    /// source is named by its resolved address: `kt:ADDRESS:PORT`, where ADDRESS is
    /// 127.0.0.1 for any loopback name (`localhost`, `127.0.0.1`, `::1`), else the lowest
    /// IPv4 address the name resolves to (else the lowest IPv6). Two bridges on one KT
    /// thus share a checkpoint however its address is spelled. A name that does not
    /// resolve is kept as written (lower case), with a warning.
    func resolvedSourceID(logger: Logger) async -> String {
        guard case let .kt(host, port) = kind else { return defaultSourceID }
        if let address = await HostAddress.canonical(host) {
            return "kt:\(address.contains(":") ? "[\(address)]" : address):\(port)"
        }
        logger.warning("cannot resolve the KT host to name the checkpoint by its address; using the name as written (give --source-id to be sure)",
                       metadata: ["host": "\(host)"])
        return "kt:\(host.lowercased()):\(port)"
    }
}

/// What a KT bridge does when the root has no checkpoint for its source id: if the root
/// holds checkpoints of other KT sources (positions that are KT timestamps, qsrest's
/// included), the bridge is probably reading a KT already migrated under another id
/// (another spelling of its address, an id given by hand), and its initial copy or a replay
/// from 0 would put KT's older values back over newer ones (qsrest's writes after the
/// producers moved). A live KT's bridge stops before writing anything, naming the ids,
/// unless `--allow-new-source-id` says this KT really is another source for the root (then
/// it warns and carries on, as a ulog directory's or a capture's replay does).
///
/// The stop counts the live sources' checkpoints only: a capture's or a ulog directory's is
/// a recording of a KT, which the live KT is at least as new as (record in production,
/// replay in CI, then bridge the server itself), so copying it loses nothing.
func otherKTSourcesCheck(sourceID: String, allowed: Bool) -> @Sendable (RootWriter, Logger) async throws -> Void {
    // qsrest's positions are wall-clock times too, and KT's values copied over its newer
    // writes are the same loss: its checkpoints count.
    checkOtherSources(sourceID: sourceID, kind: "KT or qsrest sources'", replays: "this KT's records and update log",
                      refuse: allowed ? nil : "--allow-new-source-id") { id, position in
        guard SourcePosition.isKTTimestamp(position) else { return nil }
        // A live KT's copy puts its current values over a recording's replay: nothing to say.
        if !allowed, id.hasPrefix("capture:") || id.hasPrefix("ulog:") { return nil }
        return .stops
    }
}
