/// What a replica knows of its upstream and of the root's freshest word. `status`,
/// `/readyz` and `/metrics` read this one value, so they agree at every moment; the ages
/// are computed from `nowNs`, the time the value was read.
public struct UpstreamStatus: Sendable {
    /// The upstream being followed (or tried).
    public var upstream: String?
    /// Whether a subscription is open and streaming.
    public var subscribed = false
    /// The upstream's head as of its last heartbeat.
    public var upstreamHead: UInt64 = 0
    /// When that heartbeat arrived, by this node's clock (ns since the epoch), 0 if none yet.
    public var upstreamHeardNs: UInt64 = 0
    /// The root's freshest word through the upstream (ns since the epoch), 0 if none yet.
    public var rootTimeNs: UInt64 = 0
    /// This node's head as last applied.
    public var head: UInt64 = 0
    public var nowNs: UInt64 = 0
    /// Why the last upstream was left (stale, gone, refused), until one is followed again.
    public var leftBecause: String?

    public init() {}

    /// How old the root's freshest word is: it grows while the upstream is silent or gone.
    public var rootAgeSeconds: Double? {
        guard rootTimeNs > 0 else { return nil }
        return nowNs > rootTimeNs ? Double(nowNs - rootTimeNs) / 1e9 : 0
    }

    public var lagEntries: UInt64 { upstreamHead > head ? upstreamHead - head : 0 }
}
