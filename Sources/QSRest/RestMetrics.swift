import Metrics
import NIOConcurrencyHelpers

/// qsrest's metrics (`qs_rest_*`), exported on its admin port. Per-producer series are
/// made once per producer name (when an ACL naming it is loaded), never per request.
public final class RestMetrics: Sendable {
    public let batches = Counter(label: "qs_rest_batches_committed_total")
    public let batchesFailed = Counter(label: "qs_rest_batches_failed_total")
    public let conflicts = Counter(label: "qs_rest_conflicts_total")
    public let rootWentBack = Counter(label: "qs_rest_root_went_back_total")
    public let batchSeconds = Timer(label: "qs_rest_batch_commit_seconds")
    public let pendingWrites = Gauge(label: "qs_rest_pending_writes")
    public let busy = Counter(label: "qs_rest_busy_refusals_total")
    public let authFailures = Counter(label: "qs_rest_auth_failures_total")
    public let badRequests = Counter(label: "qs_rest_bad_requests_total")
    public let binaryRefused = Counter(label: "qs_rest_binary_refused_total")
    /// Requests refused because the bodies arriving (and parses running) on all
    /// connections held all of `--max-arriving-bytes` or the producer's share, or whose
    /// parse alone would pass the share.
    public let arrivingRefused = Counter(label: "qs_rest_arriving_bytes_refusals_total")
    /// Bytes of request bodies arriving (read, not yet parsed and queued), and what their
    /// parses are estimated to build while they run, all connections.
    public let arrivingBytes = Gauge(label: "qs_rest_arriving_bytes")
    public let aclReloads = Counter(label: "qs_rest_acl_reloads_total", dimensions: [("result", "ok")])
    public let aclReloadFailures = Counter(label: "qs_rest_acl_reloads_total", dimensions: [("result", "error")])

    /// One producer's series.
    public struct Producer: Sendable {
        public let requests: Counter
        public let writes: Counter
        public let bytes: Counter
        public let refusedKeyspace: Counter
        public let refusedQuota: Counter
        public let failed: Counter
        public let delayed: Counter
        public let latency: Timer

        init(_ name: String) {
            let d = [("producer", name)]
            requests = Counter(label: "qs_rest_requests_total", dimensions: d)
            writes = Counter(label: "qs_rest_writes_total", dimensions: d)
            bytes = Counter(label: "qs_rest_bytes_total", dimensions: d)
            refusedKeyspace = Counter(label: "qs_rest_refused_total", dimensions: d + [("reason", "keyspace")])
            refusedQuota = Counter(label: "qs_rest_refused_total", dimensions: d + [("reason", "quota")])
            failed = Counter(label: "qs_rest_failed_total", dimensions: d)
            delayed = Counter(label: "qs_rest_delayed_total", dimensions: d)
            latency = Timer(label: "qs_rest_ack_seconds", dimensions: d)
        }
    }

    private let producers = NIOLockedValueBox<[String: Producer]>([:])

    public init() {}

    /// The series of `name`, made on first use.
    public func producer(_ name: String) -> Producer {
        producers.withLockedValue { all in
            if let p = all[name] { return p }
            let p = Producer(name)
            all[name] = p
            return p
        }
    }
}
