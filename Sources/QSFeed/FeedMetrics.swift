import Metrics

/// A bridge's metrics (labels `qs_bridge_*`), exported on its admin port.
public struct FeedMetrics: Sendable {
    public let changesRead = Counter(label: "qs_bridge_changes_read_total")
    public let duplicatesSkipped = Counter(label: "qs_bridge_changes_already_applied_total")
    public let batchesApplied = Counter(label: "qs_bridge_batches_applied_total")
    public let opsSent = Counter(label: "qs_bridge_ops_sent_total")
    public let bytesSent = Counter(label: "qs_bridge_bytes_sent_total")
    public let identicalDropped = Counter(label: "qs_bridge_identical_writes_dropped_total")
    /// Root and source reconnections together (kept as it was for existing queries);
    /// `rootReconnects` the root's alone, `sourceErrors` the source's.
    public let reconnects = Counter(label: "qs_bridge_reconnects_total")
    public let rootReconnects = Counter(label: "qs_bridge_root_reconnects_total")
    public let conflicts = Counter(label: "qs_bridge_conflicts_total")
    public let rootErrors = Counter(label: "qs_bridge_root_errors_total")
    public let sourceErrors = Counter(label: "qs_bridge_source_errors_total")
    public let heartbeats = Counter(label: "qs_bridge_source_heartbeats_total")
    public let caughtUpFlushes = Counter(label: "qs_bridge_caught_up_flushes_total")
    public let checkpoint = Gauge(label: "qs_bridge_checkpoint_position")
    public let lagSeconds = Gauge(label: "qs_bridge_lag_seconds")
    public let sourceSilentSeconds = Gauge(label: "qs_bridge_source_silent_seconds")
    public let pendingChanges = Gauge(label: "qs_bridge_pending_changes")
    public let rootConnected = Gauge(label: "qs_bridge_root_connected")
    public let oversizedSkipped = Counter(label: "qs_bridge_oversized_skipped_total")
    public let failovers = Counter(label: "qs_bridge_root_failovers_total")

    /// 1 for the root address in use, 0 for the others of `--root A,B,…`.
    func rootInUse(address: String) -> Gauge {
        Gauge(label: "qs_bridge_root_in_use", dimensions: [("address", address)])
    }

    public init() {}
}
