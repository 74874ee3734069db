import NIOConcurrencyHelpers
import NIOCore

/// How a listener's connections finish on graceful shutdown. Either way the listener
/// sends NIO's `ChannelShouldQuiesceEvent` to every open connection; what differs is who
/// knows whether a request is in flight.
public enum DrainStyle: Sendable {
    /// The connection's task knows: it wraps each request in `RequestDrain.request` (or
    /// `begin`/`end`), and the `RequestDrain` first in the pipeline closes an idle
    /// connection at once and a busy one as its request ends. For `NIOAsyncChannel`
    /// sessions (memcached, KT HTTP and binary reads).
    case requests
    /// The pipeline knows: its handlers act on `ChannelShouldQuiesceEvent` themselves
    /// (NIO's HTTP server pipeline, the write-protocol handler, fakekt's handlers).
    case pipeline
}

/// Tracks whether a connection is inside a request, so graceful shutdown can close it
/// when it is idle and let a request in flight finish first. Thread-safe: the session's
/// task marks requests, the event loop delivers the quiesce event (to the connection's
/// `ConnectionGuard`, which hands it here).
public final class RequestDrain: Sendable {

    private struct State {
        var inFlight = 0
        /// Of those, whole and being answered.
        var answering = 0
        var quiescing = false
        /// The pipeline drains itself (NIO's HTTP server pipeline): the quiesce event goes to it.
        var pipelineDrains = false
    }

    private let state = NIOLockedValueBox(State())
    private let channel: any Channel

    init(channel: any Channel) {
        self.channel = channel
    }

    /// True once shutdown has begun: the connection closes after its current request.
    public var isQuiescing: Bool { state.withLockedValue { $0.quiescing } }

    /// A request has arrived (its head; its body may still be coming).
    public func begin() {
        state.withLockedValue { $0.inFlight += 1 }
    }

    /// The request that began is whole and being answered: the connection's idle timeout
    /// and request deadline wait for its answer.
    public func answering() {
        state.withLockedValue { $0.answering = min($0.answering + 1, $0.inFlight) }
    }

    /// Whether a whole request is being answered.
    public var isAnswering: Bool { state.withLockedValue { $0.answering > 0 } }

    /// The request's answer is written; closes the connection if shutdown has begun.
    public func end() {
        let close = state.withLockedValue { s in
            s.inFlight = max(0, s.inFlight - 1)
            // Answers go in request order, and whole requests are the oldest in flight: the
            // one answered was one of them, unless it was refused from its head (then none
            // is answering, and the clamp keeps it so). A pipelined request still arriving
            // behind it stays not answering (it was: the timeouts never closed a connection
            // whose next request never came whole).
            s.answering = max(0, min(s.answering - 1, s.inFlight))
            return s.quiescing && s.inFlight == 0
        }
        if close { channel.close(promise: nil) }
    }

    /// Runs one request (reading it from the store, writing its answer) as in flight.
    public func request<T>(_ body: () async throws -> T) async rethrows -> T {
        begin()
        answering()
        defer { end() }
        return try await body()
    }

    /// From now on the connection's pipeline acts on `ChannelShouldQuiesceEvent` itself (a
    /// connection that turned out to speak HTTP, behind NIO's HTTP server pipeline): the
    /// event is passed down to it instead of handled here.
    public func handOverToPipeline() {
        state.withLockedValue { $0.pipelineDrains = true }
    }

    /// Graceful shutdown has begun: closes the connection now when it is idle, else as
    /// its request ends. False when the pipeline drains itself (the event is for it).
    func quiesce() -> Bool {
        let (handled, idle) = state.withLockedValue { s -> (Bool, Bool) in
            guard !s.pipelineDrains else { return (false, false) }
            s.quiescing = true
            return (true, s.inFlight == 0)
        }
        if idle { channel.close(promise: nil) }
        return handled
    }

    /// The drain of a connection a `.requests` listener accepted (its `ConnectionGuard`'s),
    /// for a pipeline set up in the listener's `configure`.
    public static func installed(in pipeline: ChannelPipeline.SynchronousOperations) -> RequestDrain? {
        (try? pipeline.handler(type: ConnectionGuard.self))?.drain
    }
}
