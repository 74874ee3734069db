import Logging
import NIOCore
import NIOPosix
import QSClient
import QSModel
import QSNet
import QSStore
import NIOConcurrencyHelpers

/// An empty LMDB replica's first bootstrap, before its store is opened
/// (docs/replication.md, "Bootstrapping an empty replica"): the upstream's snapshot is
/// written once, as it arrives, straight into the data directory (`Store.bootstrapEmpty`),
/// instead of being received and then copied record by record into an open store in one
/// transaction (which writes it twice and holds its dirty pages in memory).
public enum EmptyReplicaBootstrap {
    /// Tries the upstreams in turn until one gives a checked snapshot, for as long as it
    /// takes: a transfer cut off is tried again (resuming what arrived), an upstream down or
    /// refusing is tried again after a pause (200 ms doubling to 30 s, back to the start
    /// after progress), a snapshot that failed its checks (digest, head, hash chain) is
    /// counted (`qs_replica_bootstraps_refused_total`) and fetched again whole, and a
    /// filesystem without room for it is waited on (`qs_replica_disk_full_waits_total`). It
    /// gave up after three rounds without progress (about a second with no upstream up) and
    /// opened the empty store: its ports then answered misses, the copy went the slow way
    /// for good (the store's whole size written twice, its pages held in memory), and on a
    /// full disk LMDB's first write crashed the node (SIGBUS). Returns the head the data
    /// directory now stands at, or nil when it was cancelled (the node stopping: what
    /// arrived is kept) or the snapshot is a RocksDB checkpoint (installed once the store
    /// is open).
    /// `own`: the node's write addresses as configured (it does not listen yet), so an
    /// upstream that names them under a host name or the machine's address is said to be
    /// itself rather than refusing connections.
    public static func run(data: String, staging: String, upstreams list: @Sendable () -> [Endpoint], token: [UInt8], metrics: ReplicaMetrics,
                           own: [Endpoint] = [], progress: EmptyBootstrapProgress = EmptyBootstrapProgress(),
                           group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger) async -> Head? {
        guard !list().isEmpty else { return nil }
        var idleRounds = 0
        var backoff = Backoff(initial: .milliseconds(200), cap: .seconds(30))
        // As the follower waits for room: 5 s doubling to 5 min.
        var roomBackoff = Backoff(initial: .seconds(5), cap: .seconds(300))
        while !Task.isCancelled {
            var progressed = false, roomWaited = false
            // Read again each round: an edited --upstream-file is followed without a restart.
            let upstreams = list()
            for up in upstreams {
                let started = ContinuousClock.now
                logger.info("bootstrap of the empty store: requesting a snapshot", metadata: ["upstream": "\(up)", "data": "\(data)"])
                var size: UInt64 = 0, resumedFrom: UInt64 = 0
                var transferred = started
                let tally = SnapshotTally(metrics.bootstrapBytes)
                progress.attempt(up, tally: tally)
                do {
                    let head = try await Store.bootstrapEmpty(directory: data, staging: staging) { file in
                        let begin = try await receiveSnapshot(from: up, token: token, group: group, into: file,
                                                              checkRoom: { try checkRoom(data: data, staging: staging, size: $0, held: $1) },
                                                              logger: logger, tally: tally)
                        size = begin.size
                        resumedFrom = begin.resumedFrom
                        transferred = ContinuousClock.now
                        progress.checking()
                        return Head(index: begin.index, hash: begin.hash, commitTimeNs: 0)
                    }
                    guard let head else {
                        logger.notice("the upstream's snapshot is a RocksDB checkpoint: it is installed once the store is open",
                                      metadata: ["upstream": "\(up)"])
                        return nil
                    }
                    metrics.bootstraps.increment()
                    if resumedFrom > 0 { metrics.bootstrapsResumed.increment() }
                    logger.notice("bootstrap installed", metadata: [
                        "upstream": "\(up)", "index": "\(head.index)", "bytes": "\(size)", "resumed-at-bytes": "\(resumedFrom)",
                        "transfer-milliseconds": "\(Int((transferred - started).seconds * 1000))",
                        "check-milliseconds": "\(Int((ContinuousClock.now - transferred).seconds * 1000))",
                        "into": "the data directory, before the store opened"])
                    return head
                } catch let error as StoreError where error.refusesSnapshot {
                    // Damaged in transit or on the sender: deleted, fetched again whole.
                    metrics.bootstrapsRefused.increment()
                    logger.error("bootstrap of the empty store: the snapshot received failed its checks; it was deleted and is fetched again",
                                 metadata: ["upstream": "\(up)", "error": "\(error)"])
                    progress.failed("\(error)")
                    // Not progress: an upstream whose snapshots keep failing is given up
                    // after three rounds, and its follower backs off as it does.
                    continue
                } catch let error as StoreError where error.isDiskFull {
                    // No room for it yet: waited on (what arrived is kept), not given up to
                    // an open store that would need room for two copies. Every upstream would
                    // meet the same disk: this one is asked again after the wait.
                    let delay = roomBackoff.next()
                    metrics.diskFullWaits.increment()
                    logger.error("bootstrap of the empty store: no room for the snapshot; waiting before trying again (what arrived is kept)",
                                 metadata: ["upstream": "\(up)", "error": "\(error)", "retry-in": "\(delay)"])
                    progress.failed("\(error)")
                    await waitForRoom(delay, watching: up, token: token, metrics: metrics)
                    roomWaited = true
                    break
                } catch let error as StoreError {
                    // A file this node cannot write (an I/O error, a rename that fails): the
                    // one case that still opens the store, whose own open says what is wrong.
                    logger.error("bootstrap of the empty store failed", metadata: ["upstream": "\(up)", "error": "\(error)"])
                    progress.failed("\(error)")
                    return nil
                } catch let error as ReplicaService.FollowEnd {
                    if Task.isCancelled { return nil }
                    // The upstream broke the exchange (a snapshot longer or shorter than it
                    // announced, an end without its digest):
                    // refused, not progress, so it is asked again only after the pause (it
                    // was retried seven times a second).
                    if case .refused(nil, _) = error {
                        metrics.bootstrapsRefused.increment()
                        logger.error("bootstrap of the empty store: the upstream's snapshot was refused", metadata: ["upstream": "\(up)", "error": "\(error)"])
                    } else {
                        // The upstream's own refusal (a token it does not take, ...).
                        logger.warning("bootstrap of the empty store: the upstream refused", metadata: ["upstream": "\(up)", "error": "\(error)"])
                    }
                    progress.failed("\(error)")
                    continue
                } catch {
                    if Task.isCancelled { return nil }
                    let error = await ReplicaService.unlistenedSelf(up, error, own: own) ?? error
                    // Cut off with bytes received, or no snapshot at all (not reached, closed first).
                    logger.warning(tally.total > 0 ? "bootstrap of the empty store cut off (what arrived is kept)"
                                                   : "bootstrap of the empty store: no snapshot from this upstream",
                                   metadata: ["upstream": "\(up)", "error": "\(error)"])
                    progress.failed("\(error)")
                }
                if tally.total > 0 { progressed = true }
            }
            if roomWaited { continue }
            roomBackoff.reset()
            if progressed {
                idleRounds = 0
                backoff.reset()
            } else {
                idleRounds += 1
            }
            if idleRounds == 3 {
                logger.warning("no upstream gave a snapshot yet: the store stays closed (its ports too) and the upstreams are asked again, at most 30 s apart",
                               metadata: ["upstreams": "\(upstreams.map(\.description).joined(separator: ","))"])
            }
            try? await Task.sleep(for: backoff.next())
        }
        return nil
    }

    /// Waits `delay` for room, reading the upstream's head every 5 s meanwhile: the lag
    /// (`qs_replica_lag_entries`, from an empty store: the upstream's head) says how far
    /// the replica is behind while it cannot take a snapshot.
    static func waitForRoom(_ delay: Duration, watching up: Endpoint, token: [UInt8], metrics: ReplicaMetrics) async {
        let until = ContinuousClock.now + delay
        repeat {
            if let client = try? await QSClient.connect(to: up, readToken: token, requestTimeout: .seconds(5)) {
                if let theirs = try? await client.head() { metrics.lagEntries.record(Double(theirs.index)) }
                await client.close()
            }
            try? await Task.sleep(for: min(.seconds(5), until - .now))
        } while ContinuousClock.now < until && !Task.isCancelled
    }

    /// Refuses a snapshot of `size` bytes when the data directory's filesystem lacks room
    /// for it and a margin (a tenth, at least 1 MiB).
    static func checkRoom(data: String, staging: String, size: UInt64, held: UInt64 = 0) throws {
        let whole = size + max(size / 10, 1 << 20)
        let need = whole - min(held, whole)
        if let free = Store.freeBytes(at: staging), free < need {
            throw StoreError.diskFull("a snapshot of \(size) bytes needs about \(need) bytes free in \(staging), which has \(free)")
        }
    }
}

/// Where an empty replica's bootstrap into its data directory stands, in words for
/// `/readyz` (the store is not open yet, so nothing else can say it): which upstream, how
/// much of the snapshot has arrived, its turn in the upstream's queue, the checks, and
/// why the last attempt failed.
public final class EmptyBootstrapProgress: Sendable {
    struct State {
        var upstream: Endpoint?
        var tally: SnapshotTally?
        var attempts = 0
        var lastFailure: String?
        var checking = false
    }

    private let state = NIOLockedValueBox(State())

    public init() {}

    func attempt(_ upstream: Endpoint, tally: SnapshotTally) {
        state.withLockedValue {
            $0.upstream = upstream
            $0.tally = tally
            $0.attempts += 1
            $0.checking = false
        }
    }

    func checking() { state.withLockedValue { $0.checking = true } }

    func failed(_ why: String) {
        state.withLockedValue {
            $0.lastFailure = why
            $0.checking = false
        }
    }

    /// One line: "bootstrapping the empty store from 10.0.0.5:7000: 120.5 of 512.0 MB (23 %), attempt 2, the last cut off: …".
    public var detail: String {
        let s = state.withLockedValue { $0 }
        guard let upstream = s.upstream else { return "bootstrapping the empty store: no upstream asked yet" }
        var text = "bootstrapping the empty store from \(upstream): "
        let t = s.tally?.current ?? SnapshotTally.State()
        if let size = t.size {
            let held = t.resumedFrom + UInt64(t.fetched)
            let percent = size > 0 ? held * 100 / size : 100
            text += s.checking
                ? "\(Self.mb(size)) MB received, checking it (digest, hash chain) before it is installed"
                : "\(Self.mb(held)) of \(Self.mb(size)) MB (\(percent) %)" + (t.resumedFrom > 0 ? ", resumed at \(Self.mb(t.resumedFrom)) MB" : "")
        } else if let queued = t.queuedThere {
            text += "waiting for its turn (the upstream serves one snapshot at a time; \(queued) queued there)"
        } else {
            text += "asking for a snapshot"
        }
        if s.attempts > 1 { text += ", attempt \(s.attempts)" }
        if let failure = s.lastFailure { text += "; the last attempt: \(failure)" }
        return text
    }

    static func mb(_ bytes: UInt64) -> String {
        let tenths = (bytes * 10 + (1 << 19)) >> 20
        return "\(tenths / 10).\(tenths % 10)"
    }
}
