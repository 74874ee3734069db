import Logging
import NIOConcurrencyHelpers
import NIOCore

/// Warning lines about what peers send (bad frames, malformed requests, refused
/// connections), or about any cause that can repeat per request, at most one per peer (or
/// cause) per `window`: the lines a peer caused in between
/// are counted and the next line it causes says how many were left out (`suppressed`).
/// A peer flooding garbage costs a line every `window`, not a line per request.
public final class RateLimitedLog: Sendable {
    let window: TimeAmount
    /// Peers remembered at most; past it the oldest memory is dropped (a new peer logs at once).
    static let maxPeers = 4096
    private let peers = NIOLockedValueBox([String: (last: NIODeadline, suppressed: Int)]())

    /// Whether a peer's budget is its host's (every connection of one client shares it), or
    /// its whole address (one budget each for upstreams that share a host).
    let byHost: Bool

    public init(window: TimeAmount = .seconds(10), byHost: Bool = true) {
        self.window = window
        self.byHost = byHost
    }

    /// Logs `message` at warning level for `peer` unless a line for that peer went out
    /// within the window; then it only counts.
    public func warning(_ logger: Logger, _ message: @autoclosure () -> Logger.Message, peer: String, metadata: Logger.Metadata = [:]) {
        log(logger, .warning, message(), peer: peer, metadata: metadata)
    }

    /// `kind`: lines of different kinds from one peer have budgets of their own (e.g. the
    /// client a writer names in its hello: a bridge and qsrest on one host).
    public func log(_ logger: Logger, _ level: Logger.Level, _ message: @autoclosure () -> Logger.Message, peer: String,
                    kind: String? = nil, metadata: Logger.Metadata = [:]) {
        var m = metadata
        m["peer"] = "\(peer)"
        log(logger, level, message(), budget: (byHost ? Self.host(of: peer) : peer) + (kind.map { "\u{0} \($0)" } ?? ""), metadata: m)
    }

    /// Logs `message` unless a line with the same `budget` went out within the window; then
    /// it only counts. For lines whose cause is not a peer (a root that does not commit,
    /// a producer over its quota from any of its hosts): the budget names the cause.
    public func log(_ logger: Logger, _ level: Logger.Level, _ message: @autoclosure () -> Logger.Message, budget key: String,
                    metadata: Logger.Metadata = [:]) {
        let now = NIODeadline.now()
        let suppressed: Int? = peers.withLockedValue { peers in
            if let seen = peers[key], now - seen.last < window {
                peers[key]?.suppressed += 1
                return nil
            }
            if peers.count >= Self.maxPeers {
                peers = peers.filter { now - $0.value.last < window }
                if peers.count >= Self.maxPeers { peers.removeAll() }
            }
            let n = peers[key]?.suppressed ?? 0
            peers[key] = (now, 0)
            return n
        }
        guard let suppressed else { return }
        var m = metadata
        if suppressed > 0 { m["suppressed"] = "\(suppressed)" }
        logger.log(level: level, message(), metadata: m)
    }

    /// The host part of `host:port` (`[v6]:port`), so one peer's connections share a budget.
    static func host(of peer: String) -> String {
        if peer.hasPrefix("["), let end = peer.firstIndex(of: "]") { return String(peer[peer.index(after: peer.startIndex)..<end]) }
        if let colon = peer.lastIndex(of: ":"), peer.firstIndex(of: ":") == colon { return String(peer[..<colon]) }
        return peer
    }
}
