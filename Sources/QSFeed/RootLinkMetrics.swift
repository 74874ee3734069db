import Metrics

/// The metrics of a writer's link to its root (`RootWriter`): the bridges' and qsrest's,
/// under the bridges' names (`qs_bridge_root_*`, reconnections, root errors, failovers).
public struct RootLinkMetrics: Sendable {
    /// Root and source reconnections together for a bridge (kept as it was for existing
    /// queries); `rootReconnects` the root's alone.
    public let reconnects = Counter(label: "qs_bridge_reconnects_total")
    public let rootReconnects = Counter(label: "qs_bridge_root_reconnects_total")
    public let rootErrors = Counter(label: "qs_bridge_root_errors_total")
    public let rootConnected = Gauge(label: "qs_bridge_root_connected")
    public let failovers = Counter(label: "qs_bridge_root_failovers_total")

    /// 1 for the root address in use, 0 for the others of `--root A,B,…`.
    func rootInUse(address: String) -> Gauge {
        Gauge(label: "qs_bridge_root_in_use", dimensions: [("address", address)])
    }

    public init() {}
}
