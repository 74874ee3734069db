import Logging
import Metrics
import NIOConcurrencyHelpers
import QSNet

/// The metrics of one read interface (`memcached` or `kt_http`), declared where the work
/// happens and exported by the admin server:
/// `qs_<interface>_requests_total{command}`, `qs_<interface>_bad_requests_total`,
/// `qs_<interface>_writes_refused_total`, `qs_<interface>_connections`.
public struct ReadMetrics: Sendable {
    public let interface: String
    public let badRequests: Counter
    public let writesRefused: Counter
    public let connections: Meter
    public let hits: Counter
    public let misses: Counter
    /// `qs_read_reply_memory_refusals_total{interface}`: large replies refused because the
    /// read ports' reply budget was full (`ReplyMemory`).
    public let memoryRefusals: Counter
    /// Open connections, for the interfaces' own status replies.
    let active = ActiveConnections()
    /// Bad-input warnings, at most one per peer every 10 s (the rest counted in the next).
    let badInputLog = RateLimitedLog()
    /// Reads that failed (a damaged record, a store error), at most a line every 10 s for the
    /// interface whoever asked (a hot damaged key is asked at any rate; the store tells each
    /// damage found once, `qs_store_corruption_detected_total` counts every one).
    let readFailureLog = RateLimitedLog()

    public init(interface: String) {
        self.interface = interface
        badRequests = Counter(label: "qs_\(interface)_bad_requests_total")
        writesRefused = Counter(label: "qs_\(interface)_writes_refused_total")
        connections = Meter(label: "qs_\(interface)_connections")
        hits = Counter(label: "qs_\(interface)_key_hits_total")
        misses = Counter(label: "qs_\(interface)_key_misses_total")
        memoryRefusals = Counter(label: "qs_read_reply_memory_refusals_total", dimensions: [("interface", interface)])
    }

    /// A large reply refused because the replies not yet read hold the whole budget: counted,
    /// and a warning at most every 10 s for the interface (the cause is every client's).
    func refusedForMemory(_ logger: Logger, peer: String, bytes: Int, memory: ReplyMemory) {
        memoryRefusals.increment()
        readFailureLog.log(logger, .warning, "\(interface): a large reply refused: replies not yet read by their clients hold the whole --read-reply-memory",
                           budget: "reply memory", metadata: ["peer": "\(peer)", "reply-bytes": "\(bytes)",
                                                              "held-bytes": "\(memory.inUse)", "limit-bytes": "\(memory.limit)"])
    }

    /// Logs a failed read (rate-limited, see `readFailureLog`).
    func readFailed(_ logger: Logger, _ message: @autoclosure () -> Logger.Message, metadata: Logger.Metadata) {
        readFailureLog.log(logger, .error, message(), budget: "read failed", metadata: metadata)
    }

    func opened() {
        connections.increment()
        active.add(1)
    }

    func closed() {
        connections.decrement()
        active.add(-1)
    }

    /// A bogus request: counted and logged with its peer, never unnoticed.
    func bad(_ logger: Logger, peer: String, reason: String, _ extra: Logger.Metadata = [:]) {
        badRequests.increment()
        badInputLog.warning(logger, "bad \(interface) request", peer: peer, metadata: extra.merging(["reason": "\(reason)"]) { a, _ in a })
    }

    /// A write sent to a read-only node: counted and logged with its peer.
    func refusedWrite(_ logger: Logger, peer: String, write: String) {
        writesRefused.increment()
        badInputLog.warning(logger, "\(interface) write refused: this node is read-only, write through the QS root",
                            peer: peer, metadata: ["write": "\(write)"])
    }

    /// The request counter for one command or procedure. Callers pass names from a fixed
    /// set (unknown ones as "unknown") so the label's cardinality stays bounded.
    public func requests(_ command: String) -> Counter {
        Counter(label: "qs_\(interface)_requests_total", dimensions: [("command", command)])
    }
}

/// A count of open connections.
final class ActiveConnections: Sendable {
    private let value = NIOLockedValueBox(0)
    var count: Int { value.withLockedValue { $0 } }
    func add(_ n: Int) { value.withLockedValue { $0 += n } }
}
