import Metrics

/// A bridge's metrics (labels `qs_bridge_*`), exported on its admin port: its feed's, and
/// its root link's (`root`, which qsrest exports too).
public struct FeedMetrics: Sendable {
    public let root = RootLinkMetrics()
    public let changesRead = Counter(label: "qs_bridge_changes_read_total")
    public let duplicatesSkipped = Counter(label: "qs_bridge_changes_already_applied_total")
    public let batchesApplied = Counter(label: "qs_bridge_batches_applied_total")
    public let opsSent = Counter(label: "qs_bridge_ops_sent_total")
    public let bytesSent = Counter(label: "qs_bridge_bytes_sent_total")
    public let identicalDropped = Counter(label: "qs_bridge_identical_writes_dropped_total")
    /// Root and source reconnections together (`root.reconnects`); `sourceErrors` the source's.
    public var reconnects: Counter { root.reconnects }
    public let conflicts = Counter(label: "qs_bridge_conflicts_total")
    public let sourceErrors = Counter(label: "qs_bridge_source_errors_total")
    public let heartbeats = Counter(label: "qs_bridge_source_heartbeats_total")
    public let caughtUpFlushes = Counter(label: "qs_bridge_caught_up_flushes_total")
    public let checkpoint = Gauge(label: "qs_bridge_checkpoint_position")
    public let lagSeconds = Gauge(label: "qs_bridge_lag_seconds")
    public let sourceSilentSeconds = Gauge(label: "qs_bridge_source_silent_seconds")
    public let pendingChanges = Gauge(label: "qs_bridge_pending_changes")
    public var rootConnected: Gauge { root.rootConnected }
    public let oversizedSkipped = Counter(label: "qs_bridge_oversized_skipped_total")

    public init() {}
}
