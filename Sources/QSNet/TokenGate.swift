import Logging
import Metrics
import QSBytes

/// One interface's token (the write port's writes, its replication streams, the admin
/// port's actions): what a peer presents is compared in constant time; a refusal is
/// counted in `qs_auth_failures_total{interface=…}` (the series made once, here) and
/// logged with the peer — one line per peer host per `logEvery` at most, the next saying how
/// many were left out (`suppressed`), so a peer hammering with a wrong token cannot flood the
/// log nor hide another peer's refusals.
public final class TokenGate: Sendable {
    public let interface: String
    /// The tokens that pass (the read gate takes any of a node's tokens); empty: open.
    let tokens: [[UInt8]]
    public let flag: String
    let failures: Counter
    let logger: Logger
    let log: RateLimitedLog

    /// `token` nil: the gate is open (the interface binds loopback only, see `Endpoint.isLocalOnly`).
    public convenience init(guarding interface: String, token: [UInt8]?, flag: String, logger: Logger,
                            factory: any MetricsFactory = MetricsSystem.factory, logEvery: Duration = .seconds(10)) {
        self.init(guarding: interface, tokens: token.map { [$0] } ?? [], flag: flag, logger: logger, factory: factory, logEvery: logEvery)
    }

    /// A gate any of `tokens` passes (none: open).
    public init(guarding interface: String, tokens: [[UInt8]], flag: String, logger: Logger,
                factory: any MetricsFactory = MetricsSystem.factory, logEvery: Duration = .seconds(10)) {
        self.interface = interface
        self.tokens = tokens
        self.flag = flag
        self.logger = logger
        let (seconds, attoseconds) = logEvery.components
        log = RateLimitedLog(window: .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000))
        failures = Counter(label: "qs_auth_failures_total", dimensions: [("interface", interface)], factory: factory)
    }

    /// Whether a token is required.
    public var isClosed: Bool { !tokens.isEmpty }

    /// The token's length (0 when none is required; a gate of one token).
    public var tokenLength: Int { tokens.first?.count ?? 0 }

    /// Whether `presented` is the token (constant time; nothing counted or logged), nil
    /// when no token is required.
    public var admits: (@Sendable ([UInt8]) -> Bool)? {
        guard isClosed else { return nil }
        let tokens = self.tokens
        return { presented in Self.matches(tokens, presented) }
    }

    /// Whether `presented` is one of `tokens`: each compared in constant time, all of them
    /// always (which one matched does not show in the time taken).
    static func matches(_ tokens: [[UInt8]], _ presented: [UInt8]) -> Bool {
        var found = false
        for t in tokens where constantTimeEqual(t, presented) { found = true }
        return found
    }

    /// nil when `presented` passes (or no token is required); else the refusal, for the peer.
    public func check(_ presented: [UInt8], peer: String) -> String? {
        guard isClosed else { return nil }
        if Self.matches(tokens, presented) { return nil }
        let why = presented.isEmpty ? "missing \(interface) token" : "wrong \(interface) token"
        refuse(peer: peer, why: why)
        return "\(why): this node requires the token from its \(flag)"
    }

    /// Counts a refusal and logs it (rate-limited per peer host) with the peer and the reason.
    public func refuse(peer: String, why: String) {
        failures.increment()
        log.warning(logger, "\(interface) refused", peer: peer, metadata: ["reason": "\(why)"])
    }
}
