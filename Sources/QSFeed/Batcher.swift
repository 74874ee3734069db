import Logging
import NIOConcurrencyHelpers
import QSNet
import QSModel
import QSWire

/// Limits of one batch.
public struct BatchLimits: Sendable {
    public var interval: Duration
    public var maxOps: Int
    public var maxBytes: Int
    public var mode: WriteMode
    /// What to do with one change bigger than `maxBytes` or than the root's largest frame.
    public var oversized: OversizedPolicy

    public init(interval: Duration = .milliseconds(500), maxOps: Int = 10_000, maxBytes: Int = 16 << 20, mode: WriteMode = .batched,
                oversized: OversizedPolicy = .stop) {
        self.interval = interval
        self.maxOps = maxOps
        self.maxBytes = maxBytes
        self.mode = mode
        self.oversized = oversized
    }
}

/// What a bridge does with a change no batch can carry (over `--batch-max-bytes`, or
/// refused by the root as `frame-too-large` when sent alone): retrying cannot cure it.
public enum OversizedPolicy: String, Sendable, CaseIterable {
    /// Stop the bridge, naming the key, its size and the flag to change (the default:
    /// nothing is dropped without the operator's word).
    case stop
    /// Move the checkpoint past it without writing it; counted
    /// (`qs_bridge_oversized_skipped_total`) and logged with its key and size.
    case skip
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
        var change = change
        if change.payloadBytes > limits.maxBytes {
            change = try oversized(change, limit: "the bridge's limit of \(limits.maxBytes) bytes (--batch-max-bytes)")
        }
        pending.append(change)
        lastRead = change.position
        pendingOps += max(change.operations.count, 1)
        pendingBytes += change.payloadBytes
        metrics.pendingChanges.record(Double(pending.count))
        freshness.note(pending: pending.count)
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
            let whole = try await flushOne()
            if whole && pendingOps < limits.maxOps && pendingBytes < limits.maxBytes { break }
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
            _ = try await flushOne()
        }
    }

    /// A change no batch can carry: stops the bridge (`FeedError.stop` naming the key, its
    /// size and the flag to change) or, with `--on-oversized skip`, becomes a position
    /// without a change (counted and logged), so the checkpoint moves past it.
    func oversized(_ change: FeedChange, limit: String) throws -> FeedChange {
        let what = Self.describe(change)
        let flag = limits.mode == .compatible ? "" : " or start the bridge with --on-oversized skip to skip it"
        guard limits.oversized == .skip, limits.mode == .batched else {
            throw FeedError.stop("the change at source position \(change.position) is too big to write: \(what), over \(limit); raise that limit\(flag)")
        }
        metrics.oversizedSkipped.increment()
        logger.warning("skipped a change too big to write (--on-oversized skip)",
                       metadata: ["position": "\(change.position)", "change": "\(what)", "limit": "\(limit)"])
        return FeedChange(position: change.position, operations: [], sourceTimeNs: change.sourceTimeNs)
    }

    /// The key of a change's biggest operation and the change's size, for the operator.
    static func describe(_ change: FeedChange) -> String {
        let biggest = change.operations.max { $0.payloadBytes < $1.payloadBytes }
        let key: [UInt8]
        switch biggest {
        case let .set(k, _, _)?, let .delete(k)?, let .clearPrefix(k)?: key = k
        case nil: key = []
        }
        let printable = key.prefix(200).map { b -> String in
            (0x20..<0x7F).contains(b) && b != 0x5C ? String(UnicodeScalar(b)) : String(format: "\\x%02x", b)
        }.joined()
        let ops = change.operations.count == 1 ? "" : " (\(change.operations.count) operations)"
        return "key '\(printable)\(key.count > 200 ? "…" : "")' with \(change.payloadBytes) bytes of key and value\(ops)"
    }

    /// Sends one batch: the oldest buffered changes up to the limits. A batch the root
    /// refuses as too large (`frame-too-large`) is sent again in halves; a change refused
    /// alone is handled as oversized (`OversizedPolicy`). Returns false when the batch
    /// had to be split (the rest is still to send).
    private func flushOne() async throws -> Bool {
        var most = pending.count
        let all = most
        while true {
            do {
                try await flushOne(atMost: most)
                return most >= all
            } catch let refusal as RootRefusal where refusal.code == .frameTooLarge {
                guard most > 1 else {
                    guard let first = pending.first else { return true }
                    let skipped = try oversized(first, limit: "the root's largest frame (its --max-frame-bytes): \(refusal.message)")
                    pending[0] = skipped
                    pendingOps += 1 - max(first.operations.count, 1)
                    pendingBytes -= first.payloadBytes
                    continue
                }
                most = min(most, pending.count) / 2
                logger.info("the root refused a batch as too large; sending it in smaller batches",
                            metadata: ["changes": "\(most)", "error": "\(refusal.message)"])
            }
        }
    }

    private func flushOne(atMost most: Int) async throws {
        var count = 0, ops = 0, bytes = 0
        for c in pending {
            let o = max(c.operations.count, 1), b = c.payloadBytes
            if count >= most || count > 0 && (ops + o > limits.maxOps || bytes + b > limits.maxBytes) { break }
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
        freshness.noteProgress()
        metrics.checkpoint.record(Double(confirmed))
        metrics.pendingChanges.record(Double(pending.count))
        freshness.note(pending: pending.count)
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
/// or seen in a heartbeat with nothing pending: what its lag is measured against. It also
/// keeps how many changes wait for the root and when the checkpoint last moved, so
/// `/readyz` can tell a bridge that has work and makes no progress.
final class Freshness: Sendable {
    private let time = NIOLockedValueBox<UInt64>(0)
    private let work = NIOLockedValueBox<(pending: Int, progressNs: UInt64)>((0, wallClockNanoseconds()))

    /// Changes read and not yet applied; when the count was 0, the wait starts now.
    func note(pending: Int) {
        work.withLockedValue {
            if $0.pending == 0 && pending > 0 { $0.progressNs = wallClockNanoseconds() }
            $0.pending = pending
        }
    }

    /// The checkpoint moved (a batch applied, or another writer applied it).
    func noteProgress() { work.withLockedValue { $0.progressNs = wallClockNanoseconds() } }

    /// Pending changes and the time of the last progress (or of the first pending change).
    var pendingWork: (pending: Int, progressNs: UInt64) { work.withLockedValue { $0 } }

    func note(_ t: UInt64) { time.withLockedValue { $0 = max($0, t) } }

    /// The time, nil while nothing is known.
    var timeNs: UInt64? { time.withLockedValue { $0 == 0 ? nil : $0 } }

    static func age(of t: UInt64, now: UInt64 = wallClockNanoseconds()) -> Double {
        now > t ? Double(now - t) / 1e9 : 0
    }
}
