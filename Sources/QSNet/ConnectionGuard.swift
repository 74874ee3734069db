import NIOCore

/// Every server connection's one guard, first in its pipeline (`Listener` installs it), in
/// place of a handler per concern, so each request, answer and read passes one handler
/// instead of five (docs/benchmarks.md, "Reads"):
///
/// - **Idle timeout.** A connection that has received nothing for `timeout` is closed,
///   one that never sends a whole request too. With a drain, a whole request being
///   answered is not idle however long its answer takes, and the clock restarts at the
///   answer, so a keep-alive peer has the whole timeout to send its next request.
/// - **Request deadline.** From the first byte received while no request is pending an
///   answer, something must be written back within `timeout`, or the connection is closed:
///   the idle timeout alone restarts at every byte, so a peer trickling one byte per
///   timeout would hold its connection (and its place under the caps) forever.
/// - **Write timeout.** While the channel is not writable (its peer takes none of the
///   bytes written), a timer runs; writability back cancels it. A peer that never reads
///   cannot hold a stream (a snapshot, a subscription) or the queue behind it.
/// - **Drain.** For `DrainStyle.requests`, NIO's `ChannelShouldQuiesceEvent` goes to the
///   connection's `RequestDrain` (closed at once when idle, after its request otherwise);
///   `.pipeline` servers get the event themselves, as does a connection whose drain was
///   handed over to its pipeline (KT HTTP behind NIO's HTTP server pipeline).
///
/// Idle and deadline share one timer, armed when the connection is added and re-armed at
/// the due time when it fires early: a request costs a clock read, not a timer. A
/// connection that becomes a stream (it only sends) turns both off with `streaming()`
/// (`IdleTimeout.remove`); the write timeout stays.
///
/// The guard's logic lives in `ConnectionWatch`; a handler that answers every request
/// itself (memcached) keeps the watch inline instead (`Listener.run(watched:)`), which
/// saves the guard's hop on each of a request's five pipeline events.
final class ConnectionGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    typealias OutboundIn = NIOAny

    static let handlerName = "qsnet.connection-guard"

    let watch: ConnectionWatch
    let drain: RequestDrain?

    init(timeout: TimeAmount, drain: RequestDrain?, onClose: @escaping (CloseReason, ChannelHandlerContext) -> Void) {
        watch = ConnectionWatch(timeout: timeout, reportsErrors: true, onClose: onClose)
        self.drain = drain
        // A request whole and being answered (a qsrest write waiting for its commit) is
        // neither an idle peer nor a trickling one.
        if let drain {
            watch.answering = { drain.isAnswering }
            watch.idleFromAnswers = true
        }
    }

    func handlerAdded(context: ChannelHandlerContext) {
        watch.added(context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        watch.removed()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        watch.received()
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        watch.answered()
        context.write(data, promise: promise)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let drain, event is ChannelShouldQuiesceEvent, drain.quiesce() {
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        watch.writabilityChanged(context)
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        watch.removed()
        context.fireChannelInactive()
    }

    /// The connection only sends from now on (a replication or snapshot stream): its
    /// peer's silence is no longer idleness, and no request is pending.
    func streaming() {
        watch.streaming()
    }
}

/// A connection's idle timeout, request deadline and write timeout (`ConnectionGuard`'s
/// logic), driven by whoever sees the connection's events: the guard, or a handler that
/// keeps it inline (`Listener.run(watched:)`). Event-loop bound, like a handler.
public final class ConnectionWatch {
    /// Zero: no timeouts.
    let timeout: TimeAmount
    /// A timeout's error goes down the pipeline from the context before the close (the
    /// guard, first in its pipeline); an inline watch only closes.
    let reportsErrors: Bool
    /// Told why, on the event loop, just before the watch closes the connection.
    let onClose: (CloseReason, ChannelHandlerContext) -> Void
    /// Bytes last received (or, `idleFromAnswers`, an answer last written).
    private var lastRead = NIODeadline.now()
    /// When the request pending an answer began (its first byte), nil when none is.
    private var pendingSince: NIODeadline?
    private var idleChecks: Bool
    private var timer: Scheduled<Void>?
    private var writeTimer: Scheduled<Void>?
    /// Whether a whole request is being answered: the timeouts wait for its answer.
    var answering: (() -> Bool)?
    /// The idle clock restarts at each answer written, not only at bytes received (a peer
    /// whose answer took longer than the timeout is not closed just after it).
    var idleFromAnswers = false

    init(timeout: TimeAmount, reportsErrors: Bool, onClose: @escaping (CloseReason, ChannelHandlerContext) -> Void) {
        self.timeout = timeout
        self.reportsErrors = reportsErrors
        self.onClose = onClose
        idleChecks = timeout.nanoseconds > 0
    }

    /// The handler holding the watch was added: the idle timer starts.
    public func added(_ context: ChannelHandlerContext) {
        lastRead = .now()
        if idleChecks { arm(context, at: lastRead + timeout) }
    }

    /// The handler was removed or the channel went inactive: timers stop.
    public func removed() {
        cancelTimers()
    }

    /// Bytes arrived.
    @inline(__always)
    public func received() {
        if idleChecks {
            let now = NIODeadline.now()
            lastRead = now
            if pendingSince == nil { pendingSince = now }
        }
    }

    /// Something was written back: no request is pending.
    @inline(__always)
    public func answered() {
        pendingSince = nil
        if idleFromAnswers && idleChecks { lastRead = .now() }
    }

    /// The channel's writability changed: the write timer starts or stops. Writable again,
    /// the peer took replies: it is not idle, whether or not it sends (a client reading the
    /// answers to requests it pipelined, held back until it does).
    public func writabilityChanged(_ context: ChannelHandlerContext) {
        if context.channel.isWritable {
            writeTimer?.cancel()
            writeTimer = nil
            if idleChecks { lastRead = .now() }
        } else if writeTimer == nil, timeout.nanoseconds > 0 {
            let bound = NIOLoopBound((context, self), eventLoop: context.eventLoop)
            writeTimer = context.eventLoop.scheduleTask(in: timeout) {
                let (context, watch) = bound.value
                watch.writeTimer = nil
                watch.close(context, .writeTimeout, error: WriteTimeoutError(timeout: watch.timeout))
            }
        }
    }

    /// The request pending began before its bytes reached this watch (a connection a reader
    /// thread handed to the event loops in the middle of a request): its deadline counts
    /// from `since`, as it did on the thread.
    func requestBegan(at since: NIODeadline, _ context: ChannelHandlerContext) {
        guard idleChecks, let pending = pendingSince, since < pending else { return }
        pendingSince = since
        timer?.cancel()
        arm(context, at: since + timeout)
    }

    /// Idleness and request deadlines off from now on (a stream that only sends, or a
    /// connection closing lingering: `LingeringClose`); the write timeout stays.
    public func streaming() {
        idleChecks = false
        pendingSince = nil
        timer?.cancel()
        timer = nil
    }

    private func arm(_ context: ChannelHandlerContext, at deadline: NIODeadline) {
        let bound = NIOLoopBound((context, self), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(deadline: deadline) {
            let (context, watch) = bound.value
            watch.fired(context)
        }
    }

    private func fired(_ context: ChannelHandlerContext) {
        timer = nil
        guard idleChecks else { return }
        let due = (pendingSince ?? lastRead) + timeout
        if due > .now() {
            arm(context, at: due)
            return
        }
        if answering?() == true {
            pendingSince = nil
            lastRead = .now()
            arm(context, at: lastRead + timeout)
            return
        }
        if pendingSince != nil {
            close(context, .requestTimeout, error: RequestTimeoutError(timeout: timeout))
        } else {
            close(context, .idleTimeout, error: nil)
        }
    }

    private func close(_ context: ChannelHandlerContext, _ reason: CloseReason, error: (any Error)?) {
        onClose(reason, context)
        if reportsErrors, let error { context.fireErrorCaught(error) }
        context.close(promise: nil)
    }

    private func cancelTimers() {
        timer?.cancel()
        timer = nil
        writeTimer?.cancel()
        writeTimer = nil
    }
}

/// Why a connection whose request did not arrive whole in time was closed.
public struct RequestTimeoutError: Error, CustomStringConvertible {
    public let timeout: TimeAmount
    public var description: String {
        "no whole request within \(Double(timeout.nanoseconds) / 1e9) s of its first byte (--idle-timeout): connection closed"
    }
}

/// Why a connection whose peer stopped reading was closed.
public struct WriteTimeoutError: Error, CustomStringConvertible {
    public let timeout: TimeAmount
    public var description: String {
        "the peer took none of the bytes sent to it for \(Double(timeout.nanoseconds) / 1e9) s (--idle-timeout): connection closed"
    }
}
