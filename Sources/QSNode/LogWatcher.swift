import NIOConcurrencyHelpers

/// Tells subscription streams that the log grew. Each stream holds a continuation that
/// keeps only the newest wake-up, so a slow subscriber never queues memory here.
public final class LogWatcher: Sendable {
    private struct State {
        var nextID = 0
        var waiters: [Int: AsyncStream<Void>.Continuation] = [:]
    }

    private let state = NIOLockedValueBox(State())

    public init() {}

    /// A stream of wake-ups (the log grew, or `poke` was called) and its id.
    public func subscribe() -> (id: Int, stream: AsyncStream<Void>, continuation: AsyncStream<Void>.Continuation) {
        let (stream, continuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let id = state.withLockedValue { s in
            s.nextID += 1
            s.waiters[s.nextID] = continuation
            return s.nextID
        }
        return (id, stream, continuation)
    }

    public func unsubscribe(_ id: Int) {
        let c = state.withLockedValue { $0.waiters.removeValue(forKey: id) }
        c?.finish()
    }

    /// Wakes every stream: new entries are there.
    public func publish() {
        let all = state.withLockedValue { Array($0.waiters.values) }
        for c in all { c.yield() }
    }

    public var subscriberCount: Int { state.withLockedValue { $0.waiters.count } }
}
