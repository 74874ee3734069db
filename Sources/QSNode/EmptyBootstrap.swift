import Logging
import NIOCore
import NIOPosix
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
    /// Tries the upstreams in turn until one gives a checked snapshot. A transfer cut off
    /// is tried again (resuming what arrived) for as long as attempts make progress; a
    /// snapshot that failed its checks (digest, head, hash chain) is counted
    /// (`qs_replica_bootstraps_refused_total`) and fetched again whole; after three rounds
    /// over the list without progress it gives up. Returns the head the data
    /// directory now stands at, or nil when no snapshot was installed: the node then opens
    /// its empty store and its follower bootstraps as a non-empty one would (resuming the
    /// same partial file).
    public static func run(data: String, staging: String, upstreams: [Endpoint], token: [UInt8], metrics: ReplicaMetrics,
                           progress: EmptyBootstrapProgress = EmptyBootstrapProgress(),
                           group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger) async -> Head? {
        guard !upstreams.isEmpty else { return nil }
        var idleRounds = 0
        var backoff = Backoff(initial: .milliseconds(200), cap: .seconds(2))
        while idleRounds < 3 && !Task.isCancelled {
            var progressed = false
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
                                                              checkRoom: { try checkRoom(data: data, staging: staging, size: $0) },
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
                } catch let error as StoreError {
                    // No room, or a file this node cannot write: the follower deals with it
                    // (backoff, disk-full waits) once the store is open.
                    logger.error("bootstrap of the empty store failed", metadata: ["upstream": "\(up)", "error": "\(error)"])
                    progress.failed("\(error)")
                    return nil
                } catch {
                    if Task.isCancelled { return nil }
                    logger.warning("bootstrap of the empty store cut off", metadata: ["upstream": "\(up)", "error": "\(error)"])
                    progress.failed("\(error)")
                }
                if tally.total > 0 { progressed = true }
            }
            if progressed {
                idleRounds = 0
                backoff.reset()
            } else {
                idleRounds += 1
            }
            try? await Task.sleep(for: backoff.next())
        }
        logger.notice("no upstream gave a snapshot: opening the empty store; its follower bootstraps it",
                      metadata: ["upstreams": "\(upstreams.map(\.description).joined(separator: ","))"])
        return nil
    }

    /// Refuses a snapshot of `size` bytes when the data directory's filesystem lacks room
    /// for it and a margin (a tenth, at least 1 MiB).
    static func checkRoom(data: String, staging: String, size: UInt64) throws {
        let need = size + max(size / 10, 1 << 20)
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
