import Logging
import NIOCore
import NIOPosix
import QSModel
import QSNet
import QSStore

/// An empty LMDB replica's first bootstrap, before its store is opened
/// (docs/replication.md, "Bootstrapping an empty replica"): the upstream's snapshot is
/// written once, as it arrives, straight into the data directory (`Store.bootstrapEmpty`),
/// instead of being received and then copied record by record into an open store in one
/// transaction (which writes it twice and holds its dirty pages in memory).
public enum EmptyReplicaBootstrap {
    /// Tries the upstreams in turn until one gives a checked snapshot. A transfer cut off
    /// is tried again (resuming what arrived) for as long as attempts make progress; after
    /// three rounds over the list without progress it gives up. Returns the head the data
    /// directory now stands at, or nil when no snapshot was installed: the node then opens
    /// its empty store and its follower bootstraps as a non-empty one would (resuming the
    /// same partial file).
    public static func run(data: String, staging: String, upstreams: [Endpoint], token: [UInt8], metrics: ReplicaMetrics,
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
                do {
                    let head = try await Store.bootstrapEmpty(directory: data, staging: staging) { file in
                        let begin = try await receiveSnapshot(from: up, token: token, group: group, into: file,
                                                              checkRoom: { try checkRoom(data: data, staging: staging, size: $0) },
                                                              logger: logger, tally: tally)
                        size = begin.size
                        resumedFrom = begin.resumedFrom
                        transferred = ContinuousClock.now
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
                } catch let error as StoreError {
                    // A snapshot that failed its checks, or no room: the follower deals
                    // with it (backoff, disk-full waits) once the store is open.
                    logger.error("bootstrap of the empty store failed", metadata: ["upstream": "\(up)", "error": "\(error)"])
                    return nil
                } catch {
                    if Task.isCancelled { return nil }
                    logger.warning("bootstrap of the empty store cut off", metadata: ["upstream": "\(up)", "error": "\(error)"])
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
