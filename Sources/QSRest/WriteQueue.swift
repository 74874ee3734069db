import Logging
import NIOConcurrencyHelpers
import QSFeed
import QSModel
import QSNet
import QSWire
import ServiceLifecycle

/// Gathers the writes of every producer into batches and applies each at the root under
/// compare-and-swap on qsrest's own source position, one batch at a time; a request is
/// answered only once the batch holding it is committed at the root.
///
/// A batch is flushed every `interval`, sooner when it reaches `maxWrites` or `maxBytes`.
/// Its position is the wall clock in nanoseconds (at least the last one + 1), so positions
/// stay increasing across restarts. Answers:
/// - `written`: committed; each request gets its writes' outcomes.
/// - `conflict(current)` with `current` the batch's own new position: the batch was
///   committed and its answer lost (the connection broke and `RootWriter` sent it again);
///   its requests are answered as committed with outcomes unknown.
/// - `conflict` past the expected position: another writer moved this source id (two
///   qsrest instances with one --source-id, which is a misconfiguration and logged);
///   nothing of the batch was applied, so it is sent again from the root's position.
/// - `conflict` before the expected position: the root no longer holds writes it
///   confirmed (a store restored from a backup or wiped, another root at its address). No
///   writer can move a checkpoint back, so qsrest halts: every write is refused and
///   `/readyz` says why until an operator restarts it (`halted`).
/// - an error that retrying cannot cure: every request of the batch gets it, never a
///   false success. Connection failures are retried by `RootWriter` while requests wait.
public actor WriteQueue: Service {
    public struct Limits: Sendable {
        public var interval: Duration
        public var maxWrites: Int
        public var maxBytes: Int
        /// The memory of writes waiting for a batch (`ConditionalWrite.heldBytes`) beyond
        /// which new requests are refused (503); one request is always taken by an empty queue.
        public var maxPendingBytes: Int
        /// How long a request may wait for its commit at the root, from its arrival, before
        /// it is answered 503 (not applied when its batch was never sent, outcome unknown
        /// when it was).
        public var commitTimeout: Duration
        /// On graceful shutdown, how long what waits may still take to commit: the requests
        /// left are answered before it passes, while their connections are still served
        /// (qsrest's --shutdown-timeout less a margin for the answers to be written).
        public var stopWithin: Duration

        public init(interval: Duration = .milliseconds(500), maxWrites: Int = 10_000, maxBytes: Int = 16 << 20,
                    maxPendingBytes: Int = 256 << 20, commitTimeout: Duration = .seconds(20), stopWithin: Duration = .seconds(8)) {
            self.interval = interval
            self.maxWrites = maxWrites
            self.maxBytes = maxBytes
            self.maxPendingBytes = maxPendingBytes
            self.commitTimeout = commitTimeout
            self.stopWithin = stopWithin
        }

        /// `stopWithin` for a process whose graceful shutdown is cancelled after `shutdownTimeout`.
        public static func stopWithin(shutdownTimeout: Duration) -> Duration {
            max(shutdownTimeout * 0.8, shutdownTimeout - .seconds(1))
        }
    }

    /// What a request's writes came to.
    public enum Answer: Sendable, Equatable {
        /// Committed, with each write's outcome.
        case committed([ConditionalWrite.Outcome])
        /// Committed; the outcomes were lost with the root's answer.
        case committedOutcomesUnknown
    }

    public enum Refusal: Error, CustomStringConvertible {
        /// Too much is waiting for the root (it is slow or down): retry later.
        case busy
        /// The batch holding the request failed.
        case failed(String)
        /// The batch was not committed within `commitTimeout`: never sent (not applied), or
        /// sent and not answered (it may still be applied).
        case notCommitted(sent: Bool, why: String)
        /// qsrest is stopping and the batch could not be committed in time.
        case stopping
        /// The root refused the batch as larger than its frame limit: sending it again
        /// cannot help, and it says nothing about the root's health.
        case tooLarge(String)
        /// The root lost writes it had confirmed: qsrest writes nothing more until restarted.
        case halted

        var isHalted: Bool {
            if case .halted = self { return true }
            return false
        }

        var isTooLarge: Bool {
            if case .tooLarge = self { return true }
            return false
        }

        var isNotCommitted: Bool {
            if case .notCommitted = self { return true }
            return false
        }

        public var description: String {
            switch self {
            case .busy: return "the writes waiting for the root hold all of --max-pending-bytes (their keys and values and \(ConditionalWrite.heldOverhead) bytes each besides); retry later"
            case let .failed(why): return "the batch holding this write failed: \(why)"
            case let .notCommitted(false, why): return "not applied: no root took the batch holding this write \(Self.when(why)) (\(why)); retry"
            case let .notCommitted(true, why): return "outcome unknown: the batch holding this write was sent to the root and not answered \(Self.when(why)) (\(why)); it may still be applied: read the key before retrying a write that is not idempotent (increment, append, add)"
            case .stopping: return "qsrest is shutting down and could not commit this write"
            // Under 256 bytes, so that KT's reply encoding leaves it readable.
            case .halted: return "qsrest has stopped writing: the root lost writes it had confirmed (qsrest's log and /readyz say more); nothing of this request was written"
            case let .tooLarge(why): return "the batch holding this write is larger than the root takes in one frame (\(why)): send smaller writes, or lower qsrest's --batch-max-bytes below the root's --max-frame-bytes"
            }
        }

        /// The reason given when qsrest stops with the write waiting (`whyNotCommitted`).
        static let stoppingReason = "qsrest stopped before the root answered"

        /// What the write was not committed within: qsrest's stop or --commit-timeout.
        static func when(_ why: String) -> String {
            why == stoppingReason ? "before qsrest stopped (--shutdown-timeout)" : "within --commit-timeout"
        }
    }

    struct Pending {
        var writes: [ConditionalWrite]
        var bytes: Int
        var reply: Ticket
        /// When the whole request had arrived (before its parse and any quota delay): it is
        /// answered within `commitTimeout` of this.
        var arrived: ContinuousClock.Instant = .now
    }

    public nonisolated let sourceID: String
    let root: RootWriter
    let limits: Limits
    let logger: Logger
    let metrics: RestMetrics
    private var confirmed: UInt64?
    private var pending: [Pending] = []
    private var pendingWrites = 0
    private var pendingBytes = 0
    private var flushing = false
    private var flushWaiters: [CheckedContinuation<Void, Never>] = []
    private var stopped = false
    /// Positions of batches given up after `commitTimeout` that had been sent: one of them
    /// found committed later is not another writer.
    private var abandoned: Set<UInt64> = []
    /// The most requests a batch takes after the root refused a larger one as too large
    /// (nil: the limits alone).
    private var splitLimit: Int?
    /// Fired `stopWithin` after graceful shutdown began: every wait on the root ends then.
    let stopSignal = StopSignal()

    /// Starts the clock of `Limits.stopWithin` (once): what waits on the root is answered
    /// when it runs out. Called when the process's graceful shutdown begins (`StopClock`),
    /// which comes to the queue itself only after the server has drained, and the server's
    /// requests wait on the queue.
    public nonisolated func beginStop() {
        let signal = stopSignal, after = limits.stopWithin
        guard signal.arm() else { return }
        Task {
            try? await Task.sleep(for: after)
            signal.fire()
            // Every request still queued is answered now, not a batch a tick.
            await self.flush(untilEmpty: true)
        }
    }

    /// A service that calls `beginStop()` when graceful shutdown begins: list it after the
    /// server, so that it is told first.
    public nonisolated var stopClock: some Service { StopClock(queue: self) }

    struct StopClock: Service {
        let queue: WriteQueue
        func run() async throws {
            try? await gracefulShutdown()
            queue.beginStop()
        }
    }
    /// The highest position a batch was sent at (see `flushOne`).
    private var lastTried: UInt64 = 0
    /// The root's position for this source as last confirmed, readable without the actor.
    public nonisolated let position = NIOLockedValueBox<UInt64?>(nil)
    /// Why the last batch failed, nil once one commits: `/readyz` says it (a demoted root,
    /// a root refusing the token) until writes go through again.
    public nonisolated let lastFailure = NIOLockedValueBox<(why: String, at: ContinuousClock.Instant)?>(nil)
    /// Why qsrest writes nothing more (the root lost writes it had confirmed), nil while it
    /// writes: `/readyz` says it; only a restart clears it.
    public nonisolated let halted = NIOLockedValueBox<String?>(nil)
    /// Since when the batch at the root has waited for its commit (nil: none is there):
    /// `/readyz` says so once it is longer than `RootWriter.patience` (a root out of room
    /// that the writer keeps retrying, a hung root), while its requests wait.
    public nonisolated let committingSince = NIOLockedValueBox<ContinuousClock.Instant?>(nil)

    /// Why the queue is not ready as of `now`, given the root writer's last error: a batch
    /// that has waited more than `patience` for its commit. nil when none has.
    public nonisolated func stalled(now: ContinuousClock.Instant = .now, patience: Duration = RootWriter.patience,
                                    lastFailure: (at: ContinuousClock.Instant, why: String)?) -> String? {
        guard let since = committingSince.withLockedValue({ $0 }), now - since > patience else { return nil }
        let why = lastFailure.flatMap { $0.at >= since ? $0.why : nil }
        return "a batch has waited \(Int((now - since).seconds)) s for the root to commit it, its requests unanswered\(why.map { "; the root answers every try with: \($0)" } ?? " (no answer from the root)")"
    }

    public init(sourceID: String, root: RootWriter, limits: Limits, metrics: RestMetrics, logger: Logger) {
        self.sourceID = sourceID
        self.root = root
        self.limits = limits
        self.metrics = metrics
        self.logger = logger
    }

    /// Queues `writes` for the next batch and waits until it is committed.
    public func submit(_ writes: [ConditionalWrite]) async throws -> Answer {
        try await enqueue(writes).answer
    }

    /// Queues `writes` for the next batch, behind everything queued before this call, and
    /// returns the ticket its answer comes on: a connection's pipelined requests, queued one
    /// after another by the connection's reader, are applied in the order they were sent,
    /// while their answers are awaited apart.
    /// `arrived`: when the whole request had arrived (its commit timeout counts from then;
    /// a 3 M-record set_bulk's parse took longer than the timeout, uncounted).
    public func enqueue(_ writes: [ConditionalWrite], arrived: ContinuousClock.Instant = .now) throws -> Ticket {
        guard !stopped, !stopSignal.fired else { throw Refusal.stopping }
        guard halted.withLockedValue({ $0 }) == nil else { throw Refusal.halted }
        let bytes = writes.reduce(0) { $0 + $1.payloadBytes }
        // Counted as held in memory (`heldBytes`), not by payload alone: a producer's
        // million one-byte sets are 100 MB waiting, not 1 MB.
        let held = pendingBytes + bytes + (pendingWrites + max(writes.count, 1)) * ConditionalWrite.heldOverhead
        guard held <= limits.maxPendingBytes || pending.isEmpty else {
            metrics.busy.increment()
            throw Refusal.busy
        }
        let ticket = Ticket()
        pending.append(Pending(writes: writes, bytes: bytes, reply: ticket, arrived: min(arrived, .now)))
        pendingWrites += max(writes.count, 1)
        pendingBytes += bytes
        metrics.pendingWrites.record(Double(pendingWrites))
        if pendingWrites >= limits.maxWrites || pendingBytes >= limits.maxBytes {
            Task { await self.flush() }
        }
        return ticket
    }

    /// The answer of one queued request (`enqueue`): given once, awaited once.
    public final class Ticket: Sendable {
        private enum State {
            case waiting(CheckedContinuation<Answer, any Error>?)
            case done(Result<Answer, any Error>)
        }

        private let state = NIOLockedValueBox(State.waiting(nil))

        func resume(returning answer: Answer) { finish(.success(answer)) }
        func resume(throwing error: any Error) { finish(.failure(error)) }

        private func finish(_ result: Result<Answer, any Error>) {
            let waiter = state.withLockedValue { s -> CheckedContinuation<Answer, any Error>? in
                guard case let .waiting(c) = s else { return nil }
                s = .done(result)
                return c
            }
            waiter?.resume(with: result)
        }

        /// Waits until the request's batch is committed (or refused).
        public var answer: Answer {
            get async throws {
                try await withCheckedThrowingContinuation { c in
                    let ready = state.withLockedValue { s -> Result<Answer, any Error>? in
                        if case let .done(r) = s { return r }
                        s = .waiting(c)
                        return nil
                    }
                    if let ready { c.resume(with: ready) }
                }
            }
        }
    }

    /// Flushes every `interval` until graceful shutdown, then flushes what is left.
    public func run() async throws {
        // The position is read at once, but not waited for: with no root, the requests of
        // the first batches are answered within --commit-timeout (flushOne), not held.
        let reading = Task { await self.ensurePosition() }
        defer { reading.cancel() }
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do { try await Task.sleep(for: self.limits.interval) } catch { break }
                await self.flush()
            }
        }
        beginStop()
        await flush()
        stopped = true
        answeredAtStop += pending.count
        for p in pending { p.reply.resume(throwing: Refusal.stopping) }
        pending.removeAll()
    }

    /// Requests taken in and answered 503 because qsrest stopped before the root answered
    /// (not acknowledged; their producers send them again): qsrest then exits 75.
    public private(set) var answeredAtStop = 0

    /// Asks the root for this source's position once (retrying while it is unreachable).
    func ensurePosition() async {
        while confirmed == nil, !Task.isCancelled {
            do {
                let cp = try await root.checkpoint(sourceID: sourceID) ?? 0
                // A batch may have committed (and set the position) while this read waited.
                guard confirmed == nil else { return }
                setConfirmed(cp)
                logger.info("resuming at the root's position", metadata: ["source-id": "\(sourceID)", "position": "\(cp)"])
            } catch {
                logger.error("cannot read this source's position at the root", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }

    private func setConfirmed(_ p: UInt64) {
        confirmed = p
        // A batch given up at or below the root's position can no longer land there.
        abandoned = abandoned.filter { $0 > p }
        position.withLockedValue { $0 = p }
        lastFailure.withLockedValue { $0 = nil }
    }

    /// Every request of `batch` gets an error: nothing of it was acknowledged.
    private func fail(_ batch: [Pending], _ why: String) {
        metrics.batchesFailed.increment()
        lastFailure.withLockedValue { $0 = (why, .now) }
        if why == Refusal.stoppingReason { answeredAtStop += batch.count }
        for p in batch { p.reply.resume(throwing: Refusal.failed(why)) }
    }

    /// Sends what is pending, one batch after another, while batches are full.
    func flush(untilEmpty: Bool = false) async {
        while flushing { await withCheckedContinuation { flushWaiters.append($0) } }
        flushing = true
        defer {
            flushing = false
            if !flushWaiters.isEmpty { flushWaiters.removeFirst().resume() }
        }
        while !pending.isEmpty {
            await flushOne()
            if !untilEmpty && pendingWrites < limits.maxWrites && pendingBytes < limits.maxBytes { break }
        }
    }

    private func flushOne() async {
        let start = ContinuousClock.now
        if halted.withLockedValue({ $0 }) != nil {
            for p in takeBatch() { p.reply.resume(throwing: Refusal.halted) }
            return
        }
        // The oldest request waiting sets the deadline: --commit-timeout is how long a write
        // waits, including behind a batch the root did not answer.
        let deadline = (pending.first?.arrived ?? start) + limits.commitTimeout
        if confirmed == nil {
            do {
                // A single root address that takes no writes answers at once, as a batch does.
                let cp = try await Self.within(deadline, stop: stopSignal) { [root, sourceID] in
                    try await root.checkpoint(sourceID: sourceID, refusedAtOnce: true) ?? 0
                }
                if confirmed == nil { setConfirmed(cp) }
            } catch is CancellationError {
                return
            } catch let error as FeedError {
                // The only root address takes no writes: answered at once, as a batch is.
                let batch = takeBatch()
                logger.error("the root's position could not be read; the batch's requests get an error",
                             metadata: ["source-id": "\(sourceID)", "requests": "\(batch.count)", "error": "\(error)"])
                fail(batch, "\(error)")
                return
            } catch {
                // No root answered: nothing of the next batch was sent.
                let why = whyNotCommitted(error, otherwise: "\(error)")
                giveUp(takeBatch(), sent: false, why: why,
                       what: "the root's position could not be read " + Refusal.when(why))
                return
            }
        }
        guard let expected = confirmed else { return }
        let batch = takeBatch()
        let bytes = batch.reduce(0) { $0 + $1.bytes }
        let all = batch.flatMap(\.writes)
        var from = expected
        while true {
            // Never a position tried before: a batch given up after --commit-timeout may
            // still land at its position, and a later batch at the same one would take that
            // landing for its own commit (a 200 for writes never applied) when the clock
            // stands at or behind the stored position.
            let new = max(from &+ 1, wallClockNanoseconds(), lastTried &+ 1)
            lastTried = new
            let answer: Response
            committingSince.withLockedValue { if $0 == nil { $0 = start } }
            defer { committingSince.withLockedValue { $0 = nil } }
            let sending = NIOLockedValueBox(SendState.notSent)
            do {
                answer = try await Self.within(deadline, stop: stopSignal) { [root, sourceID, from] in
                    try await root.writes(sourceID: sourceID, expected: from, new: new, writes: all, sending: sending)
                }
            } catch let timeout as CommitTimeout {
                // Decided under the lock the writer takes before it sends: not sent now means
                // never sent.
                let wasSent = sending.withLockedValue { state -> Bool in
                    if state == .sent { return true }
                    state = .abandoned
                    return false
                }
                if wasSent { abandoned.insert(new) }
                let why = whyNotCommitted(timeout, otherwise: "no answer from the root")
                giveUp(batch, sent: wasSent, why: why, what: "a batch was not committed " + Refusal.when(why))
                return
            } catch let refusal as RootRefusal where refusal.code == .frameTooLarge && batch.count > 1 {
                // Too large together (a root cluster takes what fits one etcd request): its
                // requests are sent again at once in batches of half as many, none answered yet.
                splitLimit = batch.count / 2
                logger.info("the root refused a batch as too large; sending its requests in smaller batches",
                            metadata: ["source-id": "\(sourceID)", "requests": "\(batch.count)", "bytes": "\(bytes)", "error": "\(refusal.message)"])
                pending.insert(contentsOf: batch, at: 0)
                pendingWrites += batch.reduce(0) { $0 + max($1.writes.count, 1) }
                pendingBytes += bytes
                await flushOne()
                return
            } catch let refusal as RootRefusal where refusal.code == .frameTooLarge {
                // The batch's own size, not the root's state: /readyz stays as it was.
                logger.error("batch refused by the root as too large; its requests get 413", metadata: ["source-id": "\(sourceID)", "writes": "\(all.count)", "bytes": "\(bytes)"])
                metrics.batchesFailed.increment()
                for p in batch { p.reply.resume(throwing: Refusal.tooLarge(refusal.message)) }
                return
            } catch {
                let why = error is CancellationError ? Refusal.stoppingReason : "\(error)"
                logger.error("batch failed; its requests get an error", metadata: ["source-id": "\(sourceID)", "writes": "\(all.count)", "error": "\(why)"])
                fail(batch, why)
                return
            }
            switch answer {
            case let .written(_, outcomes) where outcomes.count == all.count:
                setConfirmed(new)
                // Batches grow back to the limits after a split, doubling.
                splitLimit = splitLimit.flatMap { $0 * 2 >= limits.maxWrites ? nil : $0 * 2 }
                metrics.batches.increment()
                metrics.batchSeconds.recordSeconds((ContinuousClock.now - start).seconds)
                var at = 0
                for p in batch {
                    p.reply.resume(returning: .committed(Array(outcomes[at..<(at + p.writes.count)])))
                    at += p.writes.count
                }
                return
            case let .conflict(current) where current == new:
                setConfirmed(new)
                metrics.batches.increment()
                logger.warning("batch committed but its answer was lost; its requests are answered without outcomes",
                               metadata: ["source-id": "\(sourceID)", "position": "\(new)"])
                for p in batch { p.reply.resume(returning: .committedOutcomesUnknown) }
                return
            case let .conflict(current) where abandoned.contains(current):
                abandoned.remove(current)
                logger.warning("a batch given up after --commit-timeout was committed after all (its requests were answered 'outcome unknown'); sending this batch from there",
                               metadata: ["source-id": "\(sourceID)", "position": "\(current)"])
                from = current
                setConfirmed(current)
            case let .conflict(current) where current < from:
                // No writer can move a checkpoint back: the root lost what it confirmed.
                let why = "the root at \(root.endpoint) has lost writes qsrest had acknowledged: its checkpoint for \(sourceID) is at \(current), before \(from), the position it last confirmed (a store restored from a backup or wiped, or another root at this address). qsrest writes nothing more: re-send what the producers wrote since, or restore the root, then restart qsrest to write on from the root's position"
                logger.critical("the root's checkpoint for this source went back; writes are refused until qsrest is restarted",
                                metadata: ["source-id": "\(sourceID)", "confirmed": "\(from)", "current": "\(current)", "reason": "\(why)"])
                metrics.rootWentBack.increment()
                metrics.batchesFailed.increment()
                halted.withLockedValue { $0 = why }
                for p in batch { p.reply.resume(throwing: Refusal.halted) }
                while !pending.isEmpty { for p in takeBatch() { p.reply.resume(throwing: Refusal.halted) } }
                return
            case let .conflict(current):
                metrics.conflicts.increment()
                logger.error("another writer moved this source id at the root: give every qsrest its own --source-id; sending the batch again from the root's position",
                             metadata: ["source-id": "\(sourceID)", "expected": "\(from)", "current": "\(current)"])
                from = current
                setConfirmed(current)
            default:
                fail(batch, "unexpected answer from the root: \(answer)")
                return
            }
        }
    }

    /// Why a wait on the root (`within`) ended without a commit: qsrest stopping, or the
    /// root's last failure.
    private func whyNotCommitted(_ error: any Error, otherwise: String) -> String {
        if (error as? CommitTimeout)?.stopping == true { return Refusal.stoppingReason }
        return root.link.withLockedValue { $0.lastCallFailure?.why ?? $0.lastError } ?? otherwise
    }

    /// Answers every request of `batch` 503, not committed (`sent`: its batch may still
    /// land, "outcome unknown"; otherwise "not applied"), logs `what` and counts it.
    private func giveUp(_ batch: [Pending], sent: Bool, why: String, what: String) {
        logger.error("\(what); its requests get 503", metadata: [
            "source-id": "\(sourceID)", "requests": "\(batch.count)", "writes": "\(batch.reduce(0) { $0 + $1.writes.count })",
            "sent": "\(sent)", "reason": "\(why)"])
        metrics.batchesFailed.increment()
        lastFailure.withLockedValue { $0 = ("\(what): \(why)", .now) }
        if why == Refusal.stoppingReason { answeredAtStop += batch.count }
        for p in batch { p.reply.resume(throwing: Refusal.notCommitted(sent: sent, why: why)) }
    }

    /// The next batch's requests, taken from `pending`: as many as fit the batch limits
    /// (at least one).
    private func takeBatch() -> [Pending] {
        var count = 0, writes = 0, bytes = 0
        for p in pending {
            let w = max(p.writes.count, 1)
            if count > 0 && (writes + w > limits.maxWrites || bytes + p.bytes > limits.maxBytes || count >= splitLimit ?? .max) { break }
            count += 1; writes += w; bytes += p.bytes
        }
        let batch = Array(pending.prefix(count))
        pending.removeFirst(count)
        pendingWrites -= writes
        pendingBytes -= bytes
        metrics.pendingWrites.record(Double(pendingWrites))
        return batch
    }

    struct CommitTimeout: Error {
        /// Given up because qsrest is stopping (the caller's task was cancelled), not at the deadline.
        var stopping = false
    }

    /// `work`'s answer, or `CommitTimeout` at `deadline` (or when the caller is cancelled:
    /// qsrest stopping), whichever comes first: `work` runs in a task of its own, cancelled
    /// when it does not win (a call blocked on the root's answer is not waited for;
    /// compare-and-swap on the position settles it if it lands). A deadline already passed
    /// does not start `work`.
    static func within<T: Sendable>(_ deadline: ContinuousClock.Instant, stop: StopSignal = StopSignal(),
                                    _ work: @escaping @Sendable () async throws -> T) async throws -> T {
        guard ContinuousClock.now < deadline else { throw CommitTimeout() }
        guard !Task.isCancelled, !stop.fired else { throw CommitTimeout(stopping: true) }
        let task = Task { try await work() }
        let winner = NIOLockedValueBox(false)
        typealias Outcome = WithinOutcome<T>
        let cancelled = NIOLockedValueBox<(@Sendable (Outcome) -> Void)?>(nil)
        let registered = NIOLockedValueBox<Int?>(nil)
        defer { stop.remove(registered.withLockedValue { $0 }) }
        let outcome: Outcome = await withTaskCancellationHandler {
            await withCheckedContinuation { (done: CheckedContinuation<Outcome, Never>) in
                @Sendable func finish(_ r: Outcome) {
                    if winner.withLockedValue({ let first = !$0; $0 = true; return first }) { done.resume(returning: r) }
                }
                Task { finish(.done(await task.result)) }
                Task {
                    try? await Task.sleep(until: deadline)
                    finish(.deadline)
                }
                cancelled.withLockedValue { $0 = finish }
                // The handler may have run before `finish` was there to call.
                if Task.isCancelled { finish(.cancelled) }
                registered.withLockedValue { $0 = stop.onFire { finish(.cancelled) } }
            }
        } onCancel: {
            cancelled.withLockedValue { $0 }?(.cancelled)
        }
        switch outcome {
        case let .done(result): return try result.get()
        case .deadline:
            task.cancel()
            throw CommitTimeout()
        case .cancelled:
            task.cancel()
            throw CommitTimeout(stopping: true)
        }
    }
}

/// How `WriteQueue.within` ended.
enum WithinOutcome<T: Sendable>: Sendable {
    case done(Result<T, any Error>), deadline, cancelled
}

/// Fired once (qsrest stopping): every action registered with `onFire` and not yet
/// removed runs then, or at once when registered after.
final class StopSignal: Sendable {
    private struct State {
        var fired = false
        var armed = false
        var next = 0
        var actions: [Int: @Sendable () -> Void] = [:]
    }
    private let state = NIOLockedValueBox(State())

    var fired: Bool { state.withLockedValue { $0.fired } }

    /// True the first time only: the caller then arranges the firing.
    func arm() -> Bool {
        state.withLockedValue { s in
            defer { s.armed = true }
            return !s.armed
        }
    }

    /// Registers `action`; returns its id for `remove`, nil when it ran at once.
    @discardableResult
    func onFire(_ action: @escaping @Sendable () -> Void) -> Int? {
        let id = state.withLockedValue { s -> Int? in
            if s.fired { return nil }
            s.next += 1
            s.actions[s.next] = action
            return s.next
        }
        if id == nil { action() }
        return id
    }

    func remove(_ id: Int?) {
        guard let id else { return }
        _ = state.withLockedValue { $0.actions.removeValue(forKey: id) }
    }

    func fire() {
        let actions = state.withLockedValue { s -> [@Sendable () -> Void] in
            s.fired = true
            defer { s.actions = [:] }
            return Array(s.actions.values)
        }
        for action in actions { action() }
    }
}
