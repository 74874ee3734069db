import Logging
import QSNet
import QSModel
import QSWire
import Synchronization

/// Limits of one batch.
public struct BatchLimits: Sendable {
    public var interval: Duration
    public var maxOps: Int
    public var maxBytes: Int
    public var mode: WriteMode

    public init(interval: Duration = .milliseconds(500), maxOps: Int = 10_000, maxBytes: Int = 16 << 20, mode: WriteMode = .batched) {
        self.interval = interval
        self.maxOps = maxOps
        self.maxBytes = maxBytes
        self.mode = mode
    }
}

/// Buffers changes read from the source and writes them to the root as compare-and-swap
/// batches, one at a time and in order. `add` suspends while the buffer is full, which is
/// what stops the source reading while the root is slow or down: at most two batches'
/// worth of changes are held (one in flight, one filling).
actor Batcher {
    let sourceID: String
    let limits: BatchLimits
    let root: RootWriter
    let logger: Logger
    let metrics: FeedMetrics
    let freshness: Freshness

    /// The root's checkpoint for this source, as last confirmed.
    private(set) var confirmed: UInt64
    private var pending: [FeedChange] = []
    private var pendingOps = 0
    private var pendingBytes = 0
    private var flushing = false
    private var waiters: [CheckedContinuation<Void, Never>] = []
    /// The newest position read from the source (for "caught up").
    private(set) var lastRead: UInt64
    private var appliedTimeNs: UInt64?
    /// Changes written by this batcher (for progress).
    private(set) var appliedChanges = 0
    private var heartbeatTimeNs: UInt64?
    /// The newest position the source vouched for without a change (a KT heartbeat's
    /// timestamp): every change at or before it was delivered. The next flush with nothing
    /// pending moves the checkpoint there (one write, no log entry).
    private var vouched: UInt64?

    init(sourceID: String, confirmed: UInt64, limits: BatchLimits, root: RootWriter, logger: Logger, metrics: FeedMetrics,
         freshness: Freshness = Freshness()) {
        self.freshness = freshness
        self.sourceID = sourceID
        self.confirmed = confirmed
        self.lastRead = confirmed
        self.limits = limits
        self.root = root
        self.logger = logger
        self.metrics = metrics
        metrics.checkpoint.record(Double(confirmed))
    }

    var isEmpty: Bool { pending.isEmpty }

    func handle(_ event: FeedEvent) async throws {
        switch event {
        case let .heartbeat(t, position):
            metrics.heartbeats.increment()
            heartbeatTimeNs = t
            if let position, limits.mode == .batched, position > lastRead {
                vouched = position
                lastRead = position
            }
            updateLag()
        case let .change(change):
            try await add(change)
        }
    }

    func add(_ change: FeedChange) async throws {
        metrics.changesRead.increment()
        let newest = pending.last?.position ?? confirmed
        guard change.position > newest else {
            // Already applied (a resume, or another bridge got there first) or out of order.
            metrics.duplicatesSkipped.increment()
            return
        }
        pending.append(change)
        lastRead = change.position
        pendingOps += max(change.operations.count, 1)
        pendingBytes += change.payloadBytes
        metrics.pendingChanges.record(Double(pending.count))
        while pendingOps >= limits.maxOps || pendingBytes >= limits.maxBytes {
            try await flush()
        }
    }

    /// Writes what is buffered, waiting for any flush already running.
    func flush() async throws {
        while flushing {
            await withCheckedContinuation { waiters.append($0) }
        }
        flushing = true
        defer {
            flushing = false
            if !waiters.isEmpty { waiters.removeFirst().resume() }
        }
        while !pending.isEmpty {
            try await flushOne()
            if pendingOps < limits.maxOps && pendingBytes < limits.maxBytes { break }
        }
        // A quiet source: move the checkpoint to the position it vouched for, so a barrier
        // (`qsctl wait --until`) completes without a change to carry it. The ticker flushes
        // once per batch interval, which bounds these writes to one per interval.
        // A quiet QS log source: ask the target whether it still takes appends (an empty
        // Append writes nothing), so a mirror bridge whose target was promoted stops now
        // rather than at the next entry.
        if pending.isEmpty, limits.mode == .compatible {
            _ = try await root.append([], sourceTimeNs: freshness.timeNs ?? 0)
        }
        if pending.isEmpty, let v = vouched, v > confirmed {
            vouched = nil
            pending.append(FeedChange(position: v, operations: [], sourceTimeNs: heartbeatTimeNs))
            pendingOps += 1
            try await flushOne()
        }
    }

    /// Sends one batch: the oldest buffered changes up to the limits.
    private func flushOne() async throws {
        var count = 0, ops = 0, bytes = 0
        for c in pending {
            let o = max(c.operations.count, 1), b = c.payloadBytes
            if count > 0 && (ops + o > limits.maxOps || bytes + b > limits.maxBytes) { break }
            count += 1; ops += o; bytes += b
        }
        let batch = Array(pending.prefix(count))
        guard let last = batch.last else { return }
        let expected = confirmed
        let response: Response
        let operations: [Mutation]
        switch limits.mode {
        case .batched:
            operations = coalesce(batch.flatMap(\.operations))
            response = try await root.batch(sourceID: sourceID, expected: expected, new: last.position, operations: operations)
        case .compatible:
            operations = batch.flatMap(\.operations)
            let entries = batch.compactMap(\.entry)
            guard entries.count == batch.count else { throw FeedError.stop("compatible mode needs a QS log source (entries to append verbatim)") }
            response = try await root.append(entries, sourceTimeNs: max(freshness.timeNs ?? 0, last.sourceTimeNs ?? 0))
        }
        switch response {
        case let .applied(_, _, dropped):
            appliedChanges += batch.count
            metrics.batchesApplied.increment()
            metrics.opsSent.increment(by: operations.count)
            metrics.bytesSent.increment(by: operations.reduce(0) { $0 + $1.payloadBytes })
            metrics.identicalDropped.increment(by: Int(dropped))
            drop(through: last.position)
            confirmed = last.position
            if let t = last.sourceTimeNs { appliedTimeNs = t }
        case let .conflict(current):
            metrics.conflicts.increment()
            guard current >= expected else {
                throw FeedError.stop("root checkpoint for \(sourceID) went back from \(expected) to \(current): refusing to guess; restart the bridge to resume from the root's checkpoint")
            }
            logger.info("conflict: another writer applied this source further; skipping what it applied",
                        metadata: ["source-id": "\(sourceID)", "expected": "\(expected)", "current": "\(current)"])
            drop(through: current)
            confirmed = current
        default:
            throw FeedError.stop("unexpected answer from root: \(response)")
        }
        metrics.checkpoint.record(Double(confirmed))
        metrics.pendingChanges.record(Double(pending.count))
        updateLag()
    }

    private func drop(through position: UInt64) {
        var n = 0
        for c in pending {
            guard c.position <= position else { break }
            n += 1
            pendingOps -= max(c.operations.count, 1)
            pendingBytes -= c.payloadBytes
        }
        pending.removeFirst(n)
    }

    /// Lag: now minus the source time of the last applied position; when everything read
    /// is applied, the source's heartbeat clock counts as applied too. The time is kept
    /// in `freshness`, which the consumer's status reads, so the lag is computed whenever
    /// it is asked (a scrape, `/readyz`) and grows while the source is silent.
    private func updateLag() {
        var t = appliedTimeNs ?? 0
        if pending.isEmpty, let hb = heartbeatTimeNs { t = max(t, hb) }
        guard t > 0 else { return }
        freshness.note(t)
        metrics.lagSeconds.record(Freshness.age(of: t))
    }
}

/// The wall time (ns since the epoch) of the newest source position a bridge has applied
/// or seen in a heartbeat with nothing pending: what its lag is measured against.
final class Freshness: Sendable {
    private let time = Mutex<UInt64>(0)

    func note(_ t: UInt64) { time.withLock { $0 = max($0, t) } }

    /// The time, nil while nothing is known.
    var timeNs: UInt64? { time.withLock { $0 == 0 ? nil : $0 } }

    static func age(of t: UInt64, now: UInt64 = wallClockNanoseconds()) -> Double {
        now > t ? Double(now - t) / 1e9 : 0
    }
}
