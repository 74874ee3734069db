import NIOConcurrencyHelpers

/// What a daemon's admin server answers while the daemon moves through its phases
/// (bootstrapping an empty store, serving, stopping): the admin listener starts first and
/// keeps one address for the process's life, and each phase installs its own `/readyz`
/// check, its scrape hook and its `POST` actions. An action declared to the admin server
/// but not offered by the current phase answers 400 with the phase's reason, never 404.
public final class AdminPhase: Sendable {
    struct Current {
        var readiness: @Sendable () -> Readiness
        var beforeScrape: @Sendable () -> Void
        var actions: [String: AdminAction]
        var unavailable: String
    }

    private let current: NIOLockedValueBox<Current>
    /// Set when graceful shutdown begins: `/readyz` says so at once, whatever the phase.
    private let stopping = NIOLockedValueBox(false)

    /// Starts in a phase that is not ready, saying `detail` on `/readyz` and, for actions,
    /// that they wait for the daemon to start.
    public init(starting detail: String) {
        current = NIOLockedValueBox(Current(readiness: { Readiness(ready: false, detail: detail) }, beforeScrape: {}, actions: [:],
                                            unavailable: "not available yet: \(detail)"))
    }

    /// Enters a phase: its readiness check, its scrape hook, its actions, and what an action
    /// it does not offer answers.
    public func enter(readiness: @escaping @Sendable () -> Readiness, beforeScrape: @escaping @Sendable () -> Void = {},
                      actions: [String: AdminAction] = [:], unavailable: String) {
        current.withLockedValue { $0 = Current(readiness: readiness, beforeScrape: beforeScrape, actions: actions, unavailable: unavailable) }
    }

    public func readiness() -> Readiness {
        if stopping.withLockedValue({ $0 }) {
            return Readiness(ready: false, detail: "stopping (SIGTERM or SIGINT): draining, taking nothing new")
        }
        return current.withLockedValue { $0.readiness }()
    }

    /// Graceful shutdown has begun: `/readyz` turns 503 now, before the listeners drain (a
    /// balancer sends nothing more while requests in flight finish).
    public func beginStopping() {
        stopping.withLockedValue { $0 = true }
    }

    public func beforeScrape() {
        current.withLockedValue { $0.beforeScrape }()
    }

    /// The admin server's actions for `paths`, each run by the phase current when it is called.
    public func actions(_ paths: [String]) -> [String: AdminAction] {
        var out = [String: AdminAction]()
        for path in paths {
            out[path] = { [self] body in
                let (action, unavailable) = current.withLockedValue { ($0.actions[path], $0.unavailable) }
                guard let action else { return (false, "\(path) \(unavailable)") }
                return action(body)
            }
        }
        return out
    }
}
