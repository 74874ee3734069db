import NIOConcurrencyHelpers

/// The bytes a listener's connections hold for requests not yet whole (bodies still
/// arriving), against one budget: reserved as they arrive, released once the request is
/// answered or its connection closes. Each connection's own cap (a body limit) bounds one
/// request; this bounds them all together, so a crowd of clients each sending an allowed
/// body at once cannot hold more than `limit` between them.
public final class PendingBytes: Sendable {
    public let limit: Int
    private let used = NIOLockedValueBox(0)

    public init(limit: Int) {
        self.limit = limit
    }

    /// Takes `n` bytes of the budget; false (nothing taken) when that would pass the limit.
    public func reserve(_ n: Int) -> Bool {
        used.withLockedValue { used in
            guard used + n <= limit else { return false }
            used += n
            return true
        }
    }

    public func release(_ n: Int) {
        guard n > 0 else { return }
        used.withLockedValue { $0 = max(0, $0 - n) }
    }

    /// Bytes held now.
    public var inUse: Int { used.withLockedValue { $0 } }
}
