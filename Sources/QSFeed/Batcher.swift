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
    /// Batches sent to the root before the bridge waits for the oldest one's answer
    /// (`--batches-in-flight`): 1 sends a batch and waits for its answer; 2 sends the next
    /// full batch while the root still commits the one before (its expected position is
    /// that batch's new one), so the root never waits for the bridge.
    public var batchesInFlight: Int
    /// Flush as soon as the source says it has sent everything it has (`--flush-when-caught-up`):
    /// a heartbeat that vouches for a position (KT's NOP, sent each time its update-log reader
    /// reaches the end) ends the batch then, so `interval` becomes an upper bound. A busy source
    /// that never reaches its end still batches by `interval` and the caps; a KT source sends
    /// at most one such heartbeat every 0.1 s, which bounds these flushes.
    public var flushWhenCaughtUp: Bool

    /// The default of `--batches-in-flight`.
    public static let defaultBatchesInFlight = 2

    public init(interval: Duration = .milliseconds(500), maxOps: Int = 10_000, maxBytes: Int = 16 << 20, mode: WriteMode = .batched,
                oversized: OversizedPolicy = .stop, batchesInFlight: Int = BatchLimits.defaultBatchesInFlight,
                flushWhenCaughtUp: Bool = true) {
        self.interval = interval
        self.maxOps = maxOps
        self.maxBytes = maxBytes
        self.mode = mode
        self.oversized = oversized
        self.batchesInFlight = max(1, batchesInFlight)
        self.flushWhenCaughtUp = flushWhenCaughtUp
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
/// batches, in order, with up to `batchesInFlight` sent and not yet answered. When a full
/// batch is sent and that many are in flight, `add` suspends until the oldest is answered,
/// which is what stops the source reading while the root is slow or down: at most
/// `batchesInFlight` batches' worth of changes are held, plus the change being delivered.
/// Answers are taken as they arrive (the checkpoint, lag and metrics move then), whether or
/// not anyone waits for them.
///
/// Batches in flight chain: each one's expected position is the new position of the one
/// before. Their answers are taken in order. An applied batch moves the checkpoint; a
/// conflict (another bridge wrote the source further, or a batch before it was not
/// applied) tells the root's checkpoint, and every change at or before it is dropped; a
/// lost answer leaves the outcome unknown. After a conflict that is not at the batch's own
/// end, or an unknown outcome, the batches still in flight are answered (each answer is
/// true of the root when it was given: an `applied` means the root's checkpoint was that
/// batch's expected position, so the changes before it were applied by someone), and then
/// everything still buffered is sent again from the checkpoint last confirmed: a batch
/// that did commit answers `conflict` at its own end or further, so nothing is applied twice
/// and nothing is skipped.
actor Batcher {
    let sourceID: String
    let limits: BatchLimits
    let root: RootWriter
    let logger: Logger
    let metrics: FeedMetrics
    let freshness: Freshness

    /// The root's checkpoint for this source, as last confirmed.
    private(set) var confirmed: UInt64
    /// Every change read and not yet confirmed, in order: the first `sent` are in batches in flight.
    private var pending: [FeedChange] = []
    private var pendingOps = 0
    private var pendingBytes = 0
    private var sent = 0
    private var sentOps = 0
    private var sentBytes = 0
    /// Batches sent and not yet answered, oldest first.
    private var inFlight: [InFlight] = []
    /// Set by a conflict short of a batch's end or an unknown outcome: the batches in flight
    /// are answered, then what is buffered is sent again from `confirmed`.
    private var resync = false
    /// The resync follows a failure: it waits this backoff first.
    private var failureBackoff: Backoff?
    /// After the root refused a batch as too large: at most this many changes a batch, until one is applied.
    private var splitAt: Int?
    /// After a `frame-too-large` refusal with several batches in flight: one batch at a
    /// time until the checkpoint passes this position (see `settleOldest`).
    private var serialThrough: UInt64?
    private var busy = false
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
    /// The ends of batches sent since the last confirmation whose answers were lost: a
    /// conflict at one of them is (most likely) that send having committed, not another writer.
    private var lostAnswers: Set<UInt64> = []

    /// A batch sent and not yet answered.
    private struct InFlight {
        let expected: UInt64
        let new: UInt64
        let changes: Int
        /// Its changes that carry something (not a checkpoint move a heartbeat vouched for,
        /// nor an oversized change skipped): what progress counts as applied.
        let carrying: Int
        let operations: Int
        let bytes: Int
        let sourceTimeNs: UInt64?
        let sent: RootWriter.Sent
        /// Set when its answer (or its failure) has arrived.
        let arrived: Arrival
    }

    final class Arrival: Sendable {
        private let box = NIOLockedValueBox(false)
        var value: Bool { box.withLockedValue { $0 } }
        func set() { box.withLockedValue { $0 = true } }
    }

    /// What an answer taken as it arrived said that stops the bridge (a checkpoint gone
    /// back): thrown by the next `add`, `tick` or `flush`.
    private var failure: (any Error)?

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

    private var unsentOps: Int { pendingOps - sentOps }
    private var unsentBytes: Int { pendingBytes - sentBytes }
    private var full: Bool { unsentOps >= limits.maxOps || unsentBytes >= limits.maxBytes }

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
            if position != nil, limits.flushWhenCaughtUp, sent < pending.count {
                try await flushCaughtUp()
            }
        case let .change(change):
            try await add(change)
            notePending()
        case let .changes(list):
            // Counted once for the run, not at every change.
            metrics.changesRead.increment(by: list.count)
            for change in list {
                if try buffer(change) { try await sendWhileFull() }
            }
            notePending()
        }
    }

    func add(_ change: consuming FeedChange) async throws {
        metrics.changesRead.increment()
        if try buffer(change) { try await sendWhileFull() }
    }

    /// Buffers one change read (already counted); true when the buffer is full and a batch
    /// must go (`sendWhileFull`) before the next change. Not async: a change that fills
    /// nothing costs no suspension point.
    private func buffer(_ change: consuming FeedChange) throws -> Bool {
        let newest = pending.isEmpty ? confirmed : pending[pending.count - 1].position
        guard change.position > newest else {
            // Already applied (a resume, or another bridge got there first) or out of order.
            metrics.duplicatesSkipped.increment()
            return false
        }
        if change.payloadBytes > limits.maxBytes {
            change = try oversized(change, limit: "the bridge's limit of \(limits.maxBytes) bytes (--batch-max-bytes)")
        }
        pendingOps += max(change.operationCount, 1)
        pendingBytes += change.payloadBytes
        lastRead = change.position
        pending.append(consume change)
        // The pending count is told when it leaves 0 (the wait for the root starts), after
        // each delivery from the source (a run of changes) and at every batch sent or
        // answered, not at every change.
        if pending.count == 1 { notePending() }
        return full
    }

    /// Sends batches while the buffer is full.
    private func sendWhileFull() async throws {
        while full {
            await acquire()
            defer { release() }
            if let failure { throw failure }
            if full { try await sendOne() }
        }
    }

    /// The ticker's flush: sends what is buffered, waiting for answers only as
    /// `batchesInFlight` asks; the others are taken as they arrive.
    func tick() async throws { try await write(waitForAnswers: false) }

    /// Writes what is buffered and waits for every answer, waiting for any flush already
    /// running. Changes added meanwhile go in a later flush (or when a batch fills).
    func flush() async throws { try await write(waitForAnswers: true) }

    /// `moveQuietCheckpoint`: with nothing left in flight, let `quiet` move the checkpoint
    /// to a vouched position (the ticker's and a final flush's work, not a caught-up flush's).
    private func write(waitForAnswers: Bool, moveQuietCheckpoint: Bool = true) async throws {
        await acquire()
        defer { release() }
        if let failure { throw failure }
        let through = pending.last?.position ?? confirmed
        while true {
            if resync {
                try await settleAll()
                continue
            }
            if sent < pending.count, pending[sent].position <= through {
                try await sendOne()
            } else if waitForAnswers, !inFlight.isEmpty {
                try await settleOldest()
            } else {
                break
            }
        }
        if moveQuietCheckpoint, inFlight.isEmpty { try await quiet() }
    }

    /// The source has sent everything it has (a heartbeat vouching for a position): what is
    /// buffered goes now rather than at the next tick. Answers are taken as they arrive, as
    /// for a tick; a position-only write (`quiet`) is left to the ticker, so an idle source's
    /// heartbeats cost the root nothing more than before.
    private func flushCaughtUp() async throws {
        metrics.caughtUpFlushes.increment()
        try await write(waitForAnswers: false, moveQuietCheckpoint: false)
    }

    /// Nothing buffered, nothing in flight: the checkpoint may move without a change.
    private func quiet() async throws {
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
            try await sendOne()
            try await settleAll()
        }
    }

    /// One sender at a time: sending and taking answers happen in order.
    private func acquire() async {
        while busy {
            await withCheckedContinuation { waiters.append($0) }
        }
        busy = true
    }

    private func release() {
        busy = false
        if !waiters.isEmpty { waiters.removeFirst().resume() }
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
        // A verbatim entry's operations are decoded only here, for the message.
        let operations = change.operations.isEmpty ? change.entry.flatMap { try? LogEntry.decode($0.bytes).operations } ?? [] : change.operations
        let biggest = operations.max { $0.payloadBytes < $1.payloadBytes }
        let key: [UInt8]
        switch biggest {
        case let .set(k, _, _)?, let .delete(k)?, let .clearPrefix(k)?: key = k
        case nil: key = []
        }
        let printable = key.prefix(200).map { b -> String in
            (0x20..<0x7F).contains(b) && b != 0x5C ? String(UnicodeScalar(b)) : String(format: "\\x%02x", b)
        }.joined()
        let ops = change.operationCount == 1 ? "" : " (\(change.operationCount) operations)"
        return "key '\(printable)\(key.count > 200 ? "…" : "")' with \(change.payloadBytes) bytes of key and value\(ops)"
    }

    /// Sends the oldest unsent changes, up to the limits, as one batch chained on the batch
    /// before (or on `confirmed`), then takes answers until fewer than `batchesInFlight`
    /// batches are in flight. A resync first answers every batch in flight.
    private func sendOne() async throws {
        if resync { try await settleAll() }
        guard sent < pending.count else { return }
        var count = 0, ops = 0, bytes = 0
        let most = splitAt ?? Int.max
        for i in sent..<pending.count { // by index: no copy of each change
            let o = max(pending[i].operationCount, 1), b = pending[i].payloadBytes
            if count >= most || count > 0 && (ops + o > limits.maxOps || bytes + b > limits.maxBytes) { break }
            count += 1; ops += o; bytes += b
        }
        guard count > 0 else { return }
        // By index, with no slice of `pending` kept: a slice alive across the awaits below
        // would make the answer's `drop` copy every change left.
        let batch = sent..<(sent + count)
        let newPosition = pending[batch.upperBound - 1].position, newTimeNs = pending[batch.upperBound - 1].sourceTimeNs
        let expected = inFlight.last?.new ?? confirmed
        let request: Request
        let operations: Int, operationBytes: Int
        switch limits.mode {
        case .batched:
            var all = [Mutation]()
            all.reserveCapacity(ops)
            for i in batch { pending[i].ops.append(to: &all) } // in place: no copy of the change
            let merged = coalesce(all)
            (operations, operationBytes) = (merged.count, merged.reduce(0) { $0 + $1.payloadBytes })
            request = .batch(.init(token: root.token, sourceID: sourceID, expected: expected, new: newPosition, operations: merged))
        case .compatible:
            var entries = [StoredEntry]()
            entries.reserveCapacity(count)
            var n = 0, m = 0
            for i in batch {
                guard let e = pending[i].entry else { throw FeedError.stop("compatible mode needs a QS log source (entries to append verbatim)") }
                entries.append(e)
                n += pending[i].operationCount
                m += pending[i].operationBytes
            }
            (operations, operationBytes) = (n, m)
            request = .append(token: root.token, entries: PackedEntries(entries), sourceTimeNs: max(freshness.timeNs ?? 0, newTimeNs ?? 0))
        }
        let what = limits.mode == .batched ? "batch" : "append"
        let handle = try await root.send(what, request)
        let arrival = Arrival()
        notePending()
        var carrying = 0
        for i in batch where pending[i].operationCount > 0 || pending[i].entry != nil { carrying += 1 }
        inFlight.append(InFlight(expected: expected, new: newPosition, changes: count, carrying: carrying, operations: operations, bytes: operationBytes,
                                 sourceTimeNs: newTimeNs, sent: handle, arrived: arrival))
        // Its answer is taken as soon as it arrives, whoever waits (or nobody).
        Task {
            _ = try? await handle.answer.wait()
            arrival.set()
            await answerArrived()
        }
        sent += count; sentOps += ops; sentBytes += bytes
        while inFlight.count >= batchesAllowed() {
            try await settleOldest()
        }
        if resync { try await settleAll() }
    }

    /// Takes the answers that have arrived, in order (an answer arrives after those before it).
    private func answerArrived() async {
        await acquire()
        defer { release() }
        do {
            while let first = inFlight.first, first.arrived.value { try await settleOldest() }
        } catch {
            if failure == nil { failure = error }
        }
    }

    /// How many batches may be in flight now: `batchesInFlight`, or one while a refusal
    /// is told apart (`serialThrough`).
    private func batchesAllowed() -> Int {
        guard let through = serialThrough else { return limits.batchesInFlight }
        if confirmed < through { return 1 }
        serialThrough = nil
        return limits.batchesInFlight
    }

    /// Takes every answer still owed, then, after a resync, marks everything buffered unsent.
    private func settleAll() async throws {
        while !inFlight.isEmpty { try await settleOldest() }
        guard resync else { return }
        resync = false
        sent = 0; sentOps = 0; sentBytes = 0
        if var backoff = failureBackoff {
            try await Task.sleep(for: backoff.next())
            failureBackoff = backoff
        }
    }

    /// Waits for the oldest batch's answer and acts on it.
    private func settleOldest() async throws {
        guard let b = inFlight.first else { return }
        let response: Response
        do {
            response = try await root.answer(b.sent)
        } catch let refusal as RootRefusal where refusal.code == .frameTooLarge {
            let others = inFlight.count > 1, lastSent = inFlight.last?.new ?? b.new
            inFlight.removeFirst()
            resync = true
            guard !others else {
                // A root refuses a frame too large as soon as it reads it, and closes, ahead
                // of the answers it owes for the requests before it: with several batches
                // in flight the refusal may be any one's. Sent again one at a time until
                // past them, the batch it is for is told apart.
                serialThrough = max(serialThrough ?? 0, lastSent)
                return
            }
            try tooLarge(b, refusal)
            return
        } catch let error as FeedError {
            inFlight.removeFirst()
            resync = true
            throw error
        } catch is CancellationError {
            // The wait ended, not the batch: it may still be applied (a conflict at its end
            // is then this bridge's own, not another writer's).
            inFlight.removeFirst()
            lostAnswers.insert(b.new)
            resync = true
            throw CancellationError()
        } catch {
            // Lost with its connection (logged and counted by the root writer): unknown.
            inFlight.removeFirst()
            lostAnswers.insert(b.new)
            resync = true
            if failureBackoff == nil { failureBackoff = Backoff() }
            return
        }
        inFlight.removeFirst()
        switch response {
        case let .applied(_, _, dropped):
            appliedChanges += b.carrying
            metrics.batchesApplied.increment()
            metrics.opsSent.increment(by: b.operations)
            metrics.bytesSent.increment(by: b.bytes)
            metrics.identicalDropped.increment(by: Int(dropped))
            drop(through: b.new)
            confirmed = max(confirmed, b.new)
            if let t = b.sourceTimeNs { appliedTimeNs = t }
            splitAt = nil
            failureBackoff = nil
        case let .conflict(current):
            metrics.conflicts.increment()
            guard current >= confirmed else {
                resync = true
                throw FeedError.stop("root checkpoint for \(sourceID) went back from \(confirmed) to \(current): refusing to guess; restart the bridge to resume from the root's checkpoint")
            }
            if current != b.new {
                let metadata: Logger.Metadata = ["source-id": "\(sourceID)", "expected": "\(b.expected)", "current": "\(current)"]
                if lostAnswers.contains(current) {
                    logger.info("a batch sent before, whose answer was lost, had committed; going on from it", metadata: metadata)
                } else if current < b.expected {
                    // Chained after a batch that was not applied as sent (it met a conflict
                    // itself): sent again from the root's checkpoint with the rest.
                    logger.debug("a batch sent after one that was not applied as sent; sending again from the root's checkpoint", metadata: metadata)
                } else {
                    if limits.mode == .compatible { try await checkSameHistory(through: min(b.new, current)) }
                    logger.info("conflict: another writer applied this source further; skipping what it applied", metadata: metadata)
                }
                resync = true
            }
            metrics.duplicatesSkipped.increment(by: drop(through: current))
            confirmed = current
        default:
            resync = true
            throw FeedError.stop("unexpected answer from root: \(response)")
        }
        lostAnswers = lostAnswers.filter { $0 > confirmed }
        freshness.noteProgress()
        metrics.checkpoint.record(Double(confirmed))
        notePending()
        updateLag()
    }

    /// A compatible append met a target ahead of it: another mirror of the same source
    /// appended those entries, or the target took other writes (a root of another history,
    /// which would take every append as a conflict and be skipped forever). The target's
    /// entry at `index` must be the source's: the hashes chain, so one equal hash vouches
    /// for every entry before it.
    private func checkSameHistory(through index: UInt64) async throws {
        guard let ours = pending.first(where: { $0.position == index })?.entry?.hash else { return }
        let theirs: [UInt8]?
        do {
            theirs = try await root.entryHash(at: index)
        } catch let error as FeedError {
            throw error
        } catch {
            return  // unknown now; the next conflict asks again
        }
        guard let theirs, theirs != ours else { return }
        resync = true
        throw FeedError.stop("the target root has another history than the source: its entry \(index) is not the source's (it took other writes, or mirrored another root); appending would skip the source's entries forever. Mirror into an empty root or one that mirrored this source (qsctl rebootstrap, or a new data directory)")
    }

    /// The root refused batch `b` as too large (`frame-too-large`): what is buffered is sent
    /// again in batches of half as many changes; a change refused alone is handled as
    /// oversized (`OversizedPolicy`).
    private func tooLarge(_ b: InFlight, _ refusal: RootRefusal) throws {
        guard b.changes == 1 else {
            splitAt = max(1, b.changes / 2)
            logger.info("the root refused a batch as too large; sending it in smaller batches",
                        metadata: ["changes": "\(b.changes / 2)", "error": "\(refusal.message)"])
            return
        }
        splitAt = 1
        guard let first = pending.first, first.position == b.new else { return }
        let skipped = try oversized(first, limit: "the root's largest frame (its --max-frame-bytes): \(refusal.message)")
        pending[0] = skipped
        pendingOps += 1 - max(first.operationCount, 1)
        pendingBytes -= first.payloadBytes
    }

    private func notePending() {
        metrics.pendingChanges.record(Double(pending.count))
        freshness.note(pending: pending.count)
    }

    /// Drops the changes at or before `position` (applied); returns how many.
    @discardableResult
    private func drop(through position: UInt64) -> Int {
        var n = 0
        for c in pending {
            guard c.position <= position else { break }
            let o = max(c.operationCount, 1), b = c.payloadBytes
            if n < sent {
                sentOps -= o
                sentBytes -= b
            }
            n += 1
            pendingOps -= o
            pendingBytes -= b
        }
        pending.removeFirst(n)
        sent = max(0, sent - n)
        return n
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
