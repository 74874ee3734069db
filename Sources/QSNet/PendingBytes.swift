import Metrics
import NIOConcurrencyHelpers
import NIOCore

/// The bytes a listener's connections hold for requests not yet whole (bodies still
/// arriving), against one budget: reserved as they arrive, released once the request is
/// answered or its connection closes. Each connection's own cap (a body limit) bounds one
/// request; this bounds them all together, so a crowd of clients each sending an allowed
/// body at once cannot hold more than `limit` between them.
///
/// A budget with a `parent` is a share of it (one producer's part of what all connections
/// may hold): bytes are taken from both or from neither, and given back to both.
public final class PendingBytes: Sendable {
    public let limit: Int
    private let used = NIOLockedValueBox(0)
    /// The bytes held, as they change.
    private let gauge: Gauge?
    /// The budget this one is a share of.
    public let parent: PendingBytes?

    public init(limit: Int, gauge: Gauge? = nil, parent: PendingBytes? = nil) {
        self.limit = limit
        self.gauge = gauge
        self.parent = parent
    }

    /// Takes `n` bytes of the budget; false (nothing taken) when that would pass the limit.
    public func reserve(_ n: Int) -> Bool {
        take(n) == nil
    }

    /// As `reserve`, and `n` is taken whatever its size while nothing else is held.
    public func reserveAlone(_ n: Int) -> Bool {
        reserve(n, alone: true)
    }

    /// Takes `n` bytes of this budget and its parent's; nil when taken, or else the budget
    /// that refused them (the parent, when both would: the whole is what is full), nothing
    /// taken from either. This one is asked first: a share refusing never holds the whole's
    /// bytes, even for a moment, against another share.
    public func take(_ n: Int) -> PendingBytes? {
        guard reserve(n, alone: false) else {
            if let parent, parent.inUse + n > parent.limit { return parent }
            return self
        }
        if let parent, let refused = parent.take(n) {
            releaseOwn(n)
            return refused
        }
        return nil
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
        parent?.force(n)
    }

    public func release(_ n: Int) {
        guard n > 0 else { return }
        releaseOwn(n)
        parent?.release(n)
    }

    private func releaseOwn(_ n: Int) {
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
