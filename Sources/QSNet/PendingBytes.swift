import Metrics
import NIOConcurrencyHelpers
import NIOCore

/// The bytes a listener's connections hold for requests not yet whole (bodies still
/// arriving), against one budget: reserved as they arrive, released once the request is
/// answered or its connection closes. Each connection's own cap (a body limit) bounds one
/// request; this bounds them all together, so a crowd of clients each sending an allowed
/// body at once cannot hold more than `limit` between them.
public final class PendingBytes: Sendable {
    public let limit: Int
    private let used = NIOLockedValueBox(0)
    /// The bytes held, as they change.
    private let gauge: Gauge?

    public init(limit: Int, gauge: Gauge? = nil) {
        self.limit = limit
        self.gauge = gauge
    }

    /// Takes `n` bytes of the budget; false (nothing taken) when that would pass the limit.
    public func reserve(_ n: Int) -> Bool {
        reserve(n, alone: false)
    }

    /// As `reserve`, and `n` is taken whatever its size while nothing else is held.
    public func reserveAlone(_ n: Int) -> Bool {
        reserve(n, alone: true)
    }

    private func reserve(_ n: Int, alone: Bool) -> Bool {
        // The gauge recorded under the lock: a late record never leaves a stale figure.
        used.withLockedValue { used in
            guard used + n <= limit || (alone && used == 0) else { return false }
            used += n
            gauge?.record(used)
            return true
        }
    }

    /// Takes `n` bytes whatever the limit (what is already built and sent).
    public func force(_ n: Int) {
        guard n > 0 else { return }
        used.withLockedValue { used in
            used += n
            gauge?.record(used)
        }
    }

    public func release(_ n: Int) {
        guard n > 0 else { return }
        used.withLockedValue { used in
            assert(used >= n, "released more bytes than were held")
            used = max(0, used - n)
            gauge?.record(used)
        }
    }

    /// Bytes held now.
    public var inUse: Int { used.withLockedValue { $0 } }
}

extension ByteBuffer {
    /// Empties a buffer that gathers request bodies, letting go of its storage once it grew
    /// past 64 KiB: a cleared buffer keeps its capacity, so an idle connection would hold
    /// the largest body it ever received.
    public mutating func clearReleasingLargeStorage() {
        if capacity > 64 << 10 { self = ByteBuffer() } else { clear() }
    }
}
