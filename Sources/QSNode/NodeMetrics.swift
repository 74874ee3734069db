import Metrics

/// The node's metrics, declared where the work happens and exported by the admin server.
public struct NodeMetrics: Sendable {
    public let batchesApplied: Counter
    public let opsApplied: Counter
    public let identicalDropped: Counter
    public let conflicts: Counter
    /// Source descriptors refused: the root holds another for the source id (a writer
    /// started with another mapping, `SetDescriptor`).
    public let descriptorRefusals: Counter
    public let badFrames: Counter
    /// Checked frames whose bytes did not match their checksum (damaged on the way).
    public let damagedFrames: Counter
    public let storageErrors: Counter
    public let invalidRequests: Counter
    public let logHead: Gauge
    public let batchApply: Metrics.Timer
    public let connections: Meter

    public let subscribers: Meter
    public let subscriptionsRefused: Counter
    public let divergedSubscribers: Counter
    public let snapshotsServed: Counter
    public let snapshotBytesSent: Counter
    public let snapshotResumes: Counter
    public let snapshotResumesRefused: Counter
    public let entriesStreamed: Counter
    /// `qs_read_reply_memory_refusals_total{interface="write"}`: large read answers on the
    /// write port refused because replies not yet read held all of `--read-reply-memory`.
    public let replyMemoryRefusals: Counter
    /// Frames refused because those arriving from connections without a token held the
    /// whole `--max-arriving-frame-bytes`.
    public let arrivingRefusals: Counter
    /// `qs_write_role{role}`: 1 for the node's write role now, 0 for the others.
    let writeRoles: [String: Gauge]
    static let writeRoleNames = ["open", "promoted", "mirror", "replica"]
    let factory: any MetricsFactory
    /// `qs_requests_total{type}` per request type, made once: no registry lookup per request.
    let requestCounters: [String: Counter]
    static let requestTypes = ["batch", "get-checkpoint", "head", "read-log", "get", "scan", "subscribe", "snapshot",
                               "append", "digest", "status", "range-records", "hello", "promote", "demote",
                               "get-copy-cursor", "writes", "auth"]

    /// Metrics made by `factory`: the process's bootstrapped one, or a test's own.
    public init(factory: any MetricsFactory = MetricsSystem.factory) {
        self.factory = factory
        batchesApplied = Counter(label: "qs_batches_applied_total", factory: factory)
        opsApplied = Counter(label: "qs_ops_applied_total", factory: factory)
        identicalDropped = Counter(label: "qs_identical_writes_dropped_total", factory: factory)
        conflicts = Counter(label: "qs_conflicts_total", factory: factory)
        descriptorRefusals = Counter(label: "qs_source_descriptor_refusals_total", factory: factory)
        badFrames = Counter(label: "qs_bad_frames_total", factory: factory)
        damagedFrames = Counter(label: "qs_damaged_frames_total", factory: factory)
        storageErrors = Counter(label: "qs_storage_errors_total", factory: factory)
        invalidRequests = Counter(label: "qs_invalid_requests_total", factory: factory)
        logHead = Gauge(label: "qs_log_head_index", factory: factory)
        batchApply = Metrics.Timer(label: "qs_batch_apply_seconds", preferredDisplayUnit: .seconds, factory: factory)
        connections = Meter(label: "qs_write_connections", factory: factory)
        subscribers = Meter(label: "qs_replication_subscribers", factory: factory)
        subscriptionsRefused = Counter(label: "qs_replication_subscriptions_refused_total", factory: factory)
        divergedSubscribers = Counter(label: "qs_replication_diverged_subscribers_total", factory: factory)
        snapshotsServed = Counter(label: "qs_snapshots_served_total", factory: factory)
        snapshotBytesSent = Counter(label: "qs_snapshot_bytes_sent_total", factory: factory)
        snapshotResumes = Counter(label: "qs_snapshot_resumes_total", factory: factory)
        snapshotResumesRefused = Counter(label: "qs_snapshot_resumes_refused_total", factory: factory)
        entriesStreamed = Counter(label: "qs_replication_entries_sent_total", factory: factory)
        replyMemoryRefusals = Counter(label: "qs_read_reply_memory_refusals_total", dimensions: [("interface", "write")], factory: factory)
        arrivingRefusals = Counter(label: "qs_write_arriving_frame_refusals_total", factory: factory)
        writeRoles = Dictionary(uniqueKeysWithValues: Self.writeRoleNames.map {
            ($0, Gauge(label: "qs_write_role", dimensions: [("role", $0)], factory: factory))
        })
        requestCounters = Dictionary(uniqueKeysWithValues: Self.requestTypes.map {
            ($0, Counter(label: "qs_requests_total", dimensions: [("type", $0)], factory: factory))
        })
    }

    /// Marks `role` (one of `writeRoleNames`) as the node's write role now.
    public func recordWriteRole(_ role: String) {
        for (name, gauge) in writeRoles { gauge.record(name == role ? 1 : 0) }
    }

    /// The counter of requests of `type`.
    public func request(_ type: String) -> Counter {
        requestCounters[type] ?? Counter(label: "qs_requests_total", dimensions: [("type", type)], factory: factory)
    }
}
