import NIOConcurrencyHelpers
import QSClient
import QSNet

/// What a writer's probes found of each address: whether it takes checked frames
/// (`CheckedFrames`), remembered for ten minutes, so a connection made meanwhile (every
/// check of a listed root, a reconnect) is not probed again. A node older than the
/// envelope counts each probe in its `qs_bad_frames_total` and logs it; an address that
/// answers a checked write "unknown request type" (a downgrade) is forgotten at once.
public final class WriteChecking: Sendable {
    private let known = NIOLockedValueBox([String: (checked: Bool, at: ContinuousClock.Instant)]())
    static let remembered: Duration = .seconds(600)

    public init() {}

    func mode(for endpoint: Endpoint, now: ContinuousClock.Instant = .now) -> QSClient.WriteChecking {
        guard let k = known.withLockedValue({ $0[endpoint.description] }), now - k.at < Self.remembered else { return .probe }
        return k.checked ? .checked : .plain
    }

    func note(_ endpoint: Endpoint, checked: Bool, now: ContinuousClock.Instant = .now) {
        known.withLockedValue { $0[endpoint.description] = (checked, now) }
    }

    func forget(_ endpoint: Endpoint) {
        _ = known.withLockedValue { $0.removeValue(forKey: endpoint.description) }
    }
}
