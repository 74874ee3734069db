import Foundation
import Logging
import NIOConcurrencyHelpers
import QSNet
import QSModel
import ServiceLifecycle
import Synchronization

/// The shared pipeline of every bridge: `source → batcher → root writer`.
///
/// It asks the root for the source's checkpoint, reads the source from there, writes
/// batches with compare-and-swap, and on a source failure flushes what it has, waits with
/// capped backoff and resumes from the root's checkpoint. On graceful shutdown it stops
/// reading, flushes its pending batch and returns.
public final class FeedConsumer<Source: FeedSource>: Service, Sendable {
    public let source: Source
    public let sourceID: String
    public let limits: BatchLimits
    public let root: RootWriter
    public let metrics: FeedMetrics
    let logger: Logger
    /// Position to start from when the root has no checkpoint for this source.
    let initialPosition: UInt64
    /// Run once when the root holds no checkpoint for this source, before anything is
    /// written for it (an initial copy, a replay from `initialPosition`): a KT bridge stops
    /// there when the root holds other KT sources' checkpoints (`FeedError.stop`), a batched
    /// QS bridge warns.
    let onFirstStart: (@Sendable (RootWriter, Logger) async throws -> Void)?
    /// Run before each (re)start of the reading (a KT bridge's initial copy).
    let preparation: (any FeedPreparation)?
    let state = NIOLockedValueBox(Status())
    let freshness = Freshness()
    /// When the consumer was made: until the source has said anything, the lag counts from
    /// here, so a bridge whose source never answers shows a growing lag, not 0.
    let startedNs = wallClockNanoseconds()
    /// When the source last delivered anything, a heartbeat included (ns since the epoch;
    /// 0 before it has): kept across reconnections, so a source that accepts connections
    /// and then says nothing reads as silent since it last spoke.
    let lastHeardNs = Atomic<UInt64>(0)
    /// Whether an event is being handed on (it waits while the root applies a batch, and
    /// the source is not read meanwhile): that wait is the root's, not the source's silence.
    let delivering = Atomic<Bool>(false)
    /// Whether `Status.sourceError` holds a failure the source has not delivered since.
    let sourceFailed = Atomic<Bool>(false)

    /// The bridge's state as of now: what `/readyz` and the scrape read.
    public struct Status: Sendable {
        public var sourceConnected = false
        /// The source's last failure (connection refused, reset, timed out), until it
        /// delivers again: what `/readyz` names while the bridge reconnects.
        public var sourceError: String?
        public var checkpoint: UInt64?
        public var finished = false
        /// Whether the root answers (a keepalive runs every second while nothing is written).
        public var rootConnected = false
        /// Why the root is not connected, when a call or keepalive failed.
        public var rootError: String?
        /// Why the root, connected, is not answering (a call waits too long), if so.
        public var rootStall: String?
        /// The root's answer to the last write call, when it failed and no call has
        /// succeeded since (a root out of room, demoted, or failing its disk), and how long
        /// ago: it refuses what the bridge writes while it still answers keepalives.
        public var rootRefusing: (why: String, seconds: Double)?
        /// Whether the root answers: connected and not stalled (`qs_bridge_root_connected`).
        public var rootAnswering: Bool { rootConnected && rootStall == nil }
        /// The wall time of the newest source position applied or seen (ns since the epoch).
        public var sourceTimeNs: UInt64?
        /// When the status was taken (ns since the epoch).
        public var nowNs: UInt64 = 0
        /// Changes read from the source and not yet applied at the root.
        public var pendingChanges = 0
        /// When the checkpoint last moved, or the first pending change was read (ns since the epoch).
        public var progressNs: UInt64 = 0

        /// How long the bridge has held pending changes without applying any (0 with none pending).
        public var stalledSeconds: Double { pendingChanges > 0 ? Freshness.age(of: progressNs, now: nowNs) : 0 }
        /// What the preparation (an initial copy) is doing, while it runs.
        public var preparing: String?

        /// Now minus the wall time of the newest source position applied (or seen in a
        /// heartbeat with nothing pending): it grows while the source or the root is silent.
        public var lagSeconds: Double? { sourceTimeNs.map { Freshness.age(of: $0, now: nowNs) } }
        /// How long the source has said nothing, not even a heartbeat (since the first
        /// reading began, before it has said anything; 0 while an event waits for the root,
        /// which holds the reading): nil for a source silent when idle, and before the first
        /// reading.
        public var sourceSilentSeconds: Double?
        /// The source's heartbeat interval and silence timeout (`FeedSource`).
        public var sourceHeartbeat: Duration?
        public var sourceSilenceTimeout: Duration?
        /// Whether the source has been silent for two heartbeats or more: hung or cut off.
        public var sourceSilent: Bool {
            guard let silent = sourceSilentSeconds, let beat = sourceHeartbeat else { return false }
            return silent >= 2 * beat.seconds
        }
    }

    public init(source: Source, sourceID: String, root: RootWriter, limits: BatchLimits = BatchLimits(),
                initialPosition: UInt64 = 0, metrics: FeedMetrics = FeedMetrics(), logger: Logger,
                onFirstStart: (@Sendable (RootWriter, Logger) async throws -> Void)? = nil,
                preparation: (any FeedPreparation)? = nil) {
        self.onFirstStart = onFirstStart
        self.preparation = preparation
        self.source = source
        self.sourceID = sourceID
        self.root = root
        self.limits = limits
        self.initialPosition = initialPosition
        self.metrics = metrics
        var l = logger
        l[metadataKey: "source-id"] = "\(sourceID)"
        self.logger = l
    }

    public var status: Status {
        var s = state.withLockedValue { $0 }
        let link = root.link.withLockedValue { $0 }
        s.rootConnected = link.connected
        s.rootError = link.lastError
        s.rootStall = link.stall()
        s.rootRefusing = link.lastCallFailure.map { ($0.why, (ContinuousClock.now - $0.at).seconds) }
        s.sourceTimeNs = freshness.timeNs ?? startedNs
        (s.pendingChanges, s.progressNs) = freshness.pendingWork
        s.nowNs = wallClockNanoseconds()
        if let beat = source.heartbeatInterval {
            let heard = lastHeardNs.load(ordering: .relaxed)
            s.sourceSilentSeconds = heard == 0 ? nil : delivering.load(ordering: .relaxed) ? 0 : Freshness.age(of: heard, now: s.nowNs)
            s.sourceHeartbeat = beat
            s.sourceSilenceTimeout = source.silenceTimeout
        }
        s.preparing = preparation?.activity
        return s
    }

    /// Records the gauges computed from the present (lag), right before a scrape.
    public func refreshGauges() {
        let s = status
        if let lag = s.lagSeconds { metrics.lagSeconds.record(lag) }
        if let silent = s.sourceSilentSeconds { metrics.sourceSilentSeconds.record(silent) }
        metrics.rootConnected.record(s.rootAnswering ? 1 : 0)
    }

    public func run() async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                // An idle source writes nothing, and a failed source leaves the root alone
                // while it backs off: the keepalive is what notices a dead root then.
                while true {
                    try await Task.sleep(for: .milliseconds(500))
                    await self.root.keepalive()
                }
            }
            defer { group.cancelAll() }
            try await self.consume()
        }
    }

    /// `consumeSource()`, with a stop logged once whatever step met it (a root refusing
    /// this writer at its first call, as the source or the preparation).
    private func consume() async throws {
        do {
            try await consumeSource()
        } catch let stop as FeedError {
            logger.error("bridge stopped", metadata: ["reason": "\(stop)"])
            throw stop
        }
    }

    private func consumeSource() async throws {
        var backoff = Backoff()
        var failuresInARow = 0
        if let onFirstStart, try await root.position(sourceID: sourceID, mode: limits.mode) == nil {
            // Before the preparation: an initial copy writes the source's records over the
            // root's as surely as a replay from 0 does.
            try await onFirstStart(root, logger)
        }
        while true {
            if let preparation {
                do {
                    try await cancelWhenGracefulShutdown { try await preparation.prepare(root: self.root, sourceID: self.sourceID) }
                } catch let stop as FeedError {
                    throw stop
                } catch {
                    if error is CancellationError || Task.isCancelled || Task.isShuttingDownGracefully {
                        logger.info("stopped on shutdown before reading the source")
                        return
                    }
                    metrics.sourceErrors.increment()
                    state.withLockedValue { $0.sourceError = "\(error)" }
                    sourceFailed.store(true, ordering: .relaxed)
                    let delay = backoff.next()
                    logger.warning("preparing to read the source failed; trying again", metadata: ["error": "\(error)", "retry-in": "\(delay)"])
                    try await Task.sleep(for: delay)
                    continue
                }
            }
            let known = try await root.position(sourceID: sourceID, mode: limits.mode)
            let start = known ?? initialPosition
            let batcher = Batcher(sourceID: sourceID, confirmed: start, limits: limits, root: root, logger: logger,
                                  metrics: metrics, freshness: freshness)
            state.withLockedValue { $0.checkpoint = start }
            // Once per run of failures: a source refusing every connection says "source
            // failed" each time (with the backoff), not also this.
            logger.log(level: failuresInARow < 2 ? .info : .debug, "reading source", metadata: ["source": "\(source.name)", "after": "\(start)"])
            let outcome = await readUntilDone(batcher)
            // Whatever happened, write what was read (a stop still applies what came before it).
            try await finalFlush(batcher)
            let reached = await batcher.confirmed
            let readUpTo = await batcher.lastRead
            switch outcome {
            case .finished:
                logger.info("source finished; everything read is applied", metadata: ["checkpoint": "\(reached)"])
                state.withLockedValue { $0.finished = true }
                return
            case .shutdown:
                logger.info("stopped reading on shutdown; pending batch flushed", metadata: ["checkpoint": "\(reached)", "read-up-to": "\(readUpTo)"])
                return
            case let .failed(error):
                if let stop = error as? FeedError, case .stop = stop { throw stop }
                metrics.sourceErrors.increment()
                metrics.reconnects.increment()
                state.withLockedValue { $0.sourceError = "\(error)" }
                sourceFailed.store(true, ordering: .relaxed)
                failuresInARow += 1
                let delay = backoff.next()
                logger.warning("source failed; resuming from the root's checkpoint",
                               metadata: ["source": "\(source.name)", "error": "\(error)", "retry-in": "\(delay)"])
                try await Task.sleep(for: delay)
            }
            if reached > start {
                backoff.reset()
                failuresInARow = 0
            }
        }
    }

    enum Outcome {
        case finished, shutdown, failed(any Error)
    }

    /// Reads the source and feeds the batcher, with a ticker flushing every interval,
    /// until the source ends or fails, or a graceful shutdown asks to stop reading.
    private func readUntilDone(_ batcher: Batcher) async -> Outcome {
        let source = self.source
        let limits = self.limits
        let start = await batcher.confirmed
        do {
            try await cancelWhenGracefulShutdown {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        self.state.withLockedValue { $0.sourceConnected = true }
                        // Silence counts from the first reading, not from the bridge's start
                        // (an initial copy may have taken hours).
                        _ = self.lastHeardNs.compareExchange(expected: 0, desired: wallClockNanoseconds(), ordering: .relaxed)
                        defer { self.state.withLockedValue { $0.sourceConnected = false } }
                        try await source.run(after: start) { event in
                            // Heard: silence reads 0 while the event is handed on, and counts from its end.
                            self.delivering.store(true, ordering: .relaxed)
                            if self.sourceFailed.load(ordering: .relaxed) {
                                self.sourceFailed.store(false, ordering: .relaxed)
                                self.state.withLockedValue { $0.sourceError = nil }
                            }
                            defer {
                                self.lastHeardNs.store(wallClockNanoseconds(), ordering: .relaxed)
                                self.delivering.store(false, ordering: .relaxed)
                            }
                            try await batcher.handle(event)
                        }
                    }
                    group.addTask {
                        var progress = Progress(start: start)
                        while true {
                            try await Task.sleep(for: limits.interval)
                            try await batcher.tick()
                            let cp = await batcher.confirmed
                            self.state.withLockedValue { $0.checkpoint = cp }
                            progress.report(checkpoint: cp, applied: await batcher.appliedChanges, lag: self.status.lagSeconds, logger: self.logger)
                        }
                    }

                    // The source task ends first (finite source or error); then stop the ticker.
                    try await group.next()
                    group.cancelAll()
                }
            }
            return .finished
        } catch is CancellationError {
            return .shutdown
        } catch {
            if Task.isCancelled || Task.isShuttingDownGracefully { return .shutdown }
            return .failed(error)
        }
    }

    /// Progress of long work: a line rewritten in place on a terminal, a log line every
    /// 10 s otherwise, with the applied position, the rate and the lag.
    struct Progress {
        let start: UInt64
        var lastLog = ContinuousClock.now
        let began = ContinuousClock.now
        let terminal = isatty(2) == 1

        init(start: UInt64) {
            self.start = start
        }

        mutating func report(checkpoint: UInt64, applied: Int, lag: Double?, logger: Logger) {
            let now = ContinuousClock.now
            let lagText = lag.map { String(format: "%.1f s", $0) } ?? "?"
            let rate = Double(applied) / max((now - began).seconds, 0.001)
            if terminal {
                let line = "\r\u{1B}[2Kposition \(checkpoint)  \(applied) changes applied  \(String(format: "%.0f", rate)) changes/s  lag \(lagText)"
                FileHandle.standardError.write(Data(line.utf8))
            } else if now - lastLog >= .seconds(10) {
                logger.info("progress", metadata: ["checkpoint": "\(checkpoint)", "applied": "\(applied)",
                                                   "changes-per-second": "\(Int(rate))", "lag-seconds": "\(lagText)"])
                lastLog = now
            }
        }
    }

    private func finalFlush(_ batcher: Batcher) async throws {
        try await batcher.flush()
        let cp = await batcher.confirmed
        state.withLockedValue { $0.checkpoint = cp }
    }
}

/// What `checkOtherSources` makes of another source id the root holds.
public enum OtherSource: Sendable {
    /// A source this one may well be under another name: the bridge stops (unless allowed).
    case stops
    /// A source whose replay this one's start may go over (a recording): said, not stopped.
    case warns
}

/// A `FeedConsumer.onFirstStart` for a bridge whose source id has no checkpoint at the
/// root: when the root holds checkpoints of other sources of the same kind (`classify`),
/// the bridge is probably reading a source already migrated under another id (another
/// spelling or address of it, another member of its cluster, an id given by hand), and
/// starting from position 0 replays its whole log over newer values: readers see old
/// values come back until it has caught up. It says so loudly, naming the ids; with
/// `refuse` (`overrideFlag` names the flag that allows it) an id classified `.stops` stops
/// the bridge instead (`FeedError.stop`), before anything is written.
public func checkOtherSources(sourceID: String, kind: String, replays: String, refuse overrideFlag: String? = nil,
                              classify: @escaping @Sendable (String, UInt64) -> OtherSource?) -> @Sendable (RootWriter, Logger) async throws -> Void {
    { root, logger in
        guard let all = try? await root.checkpoints() else { return }
        var others = [String: OtherSource]()
        for (id, position) in all where id != sourceID { others[id] = classify(id, position) }
        guard !others.isEmpty else { return }
        let stopping = others.filter { if case .stops = $0.value { true } else { false } }.keys.sorted()
        if let overrideFlag, !stopping.isEmpty {
            let what = "the root has no checkpoint for source id \(sourceID) but holds other \(kind) checkpoints (\(stopping.joined(separator: ", "))): starting from position 0 replays \(replays) over newer values"
            throw FeedError.stop("\(what), and nothing was written. If this source is one of those under another name (another spelling of its address, an id given by hand), start the bridge with --source-id set to that id; if it really is another source for this root, start it with \(overrideFlag)")
        }
        let listed = others.keys.sorted()
        let what = "the root has no checkpoint for source id \(sourceID) but holds other \(kind) checkpoints (\(listed.joined(separator: ", "))): starting from position 0 replays \(replays) over newer values"
        logger.error("\(what). If this source is one of those under another name, stop this bridge and restart it with --source-id set to that id",
                     metadata: ["source-id": "\(sourceID)", "other-source-ids": "\(listed.joined(separator: ","))"])
    }
}
