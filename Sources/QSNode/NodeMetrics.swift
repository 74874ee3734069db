import Metrics

/// The node's metrics, declared where the work happens and exported by the admin server.
public struct NodeMetrics: Sendable {
    public let batchesApplied = Counter(label: "qs_batches_applied_total")
    public let opsApplied = Counter(label: "qs_ops_applied_total")
    public let identicalDropped = Counter(label: "qs_identical_writes_dropped_total")
    public let conflicts = Counter(label: "qs_conflicts_total")
    public let badFrames = Counter(label: "qs_bad_frames_total")
    public let authFailures = Counter(label: "qs_auth_failures_total")
    public let storageErrors = Counter(label: "qs_storage_errors_total")
    public let invalidRequests = Counter(label: "qs_invalid_requests_total")
    public let logHead = Gauge(label: "qs_log_head_index")
    public let batchApply = Metrics.Timer(label: "qs_batch_apply_seconds", preferredDisplayUnit: .seconds)
    public let connections = Meter(label: "qs_write_connections")

    public let subscribers = Meter(label: "qs_replication_subscribers")
    public let subscriptionsRefused = Counter(label: "qs_replication_subscriptions_refused_total")
    public let divergedSubscribers = Counter(label: "qs_replication_diverged_subscribers_total")
    public let snapshotsServed = Counter(label: "qs_snapshots_served_total")
    public let entriesStreamed = Counter(label: "qs_replication_entries_sent_total")

    public init() {}

    public func request(_ type: String) -> Counter {
        Counter(label: "qs_requests_total", dimensions: [("type", type)])
    }
}
