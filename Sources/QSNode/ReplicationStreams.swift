import Logging
import NIOCore
import QSModel
import QSStore
import QSWire

/// The upstream side of replication: what a node streams on a connection that asked to
/// subscribe or for a snapshot. Every node, root or replica, serves both, so trees of any
/// depth can be built.
enum ReplicationStreams {
    /// Streams entries after `from` as they are committed, with a heartbeat every second
    /// carrying this node's head and the time of the root's freshest word. Each write
    /// waits for the socket to take it, so a slow subscriber slows only its own stream.
    static func subscription(channel: Channel, core: NodeCore, from: UInt64, logger: Logger, peer: String) async {
        core.metrics.subscribers.increment()
        defer { core.metrics.subscribers.decrement() }
        let (id, stream, wake) = core.watcher.subscribe()
        defer { core.watcher.unsubscribe(id) }
        let ticker = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                wake.yield()
            }
        }
        defer { ticker.cancel() }
        logger.info("subscriber connected", metadata: ["peer": "\(peer)", "from": "\(from)"])
        var next = from + 1
        var lastHeartbeat = ContinuousClock.now - .seconds(2)
        var wakeups = stream.makeAsyncIterator()
        do {
            while channel.isActive && !Task.isCancelled {
                let from = next
                let batch = try await core.store.entries(from: from, count: 1000)
                if let first = batch.first, first.index != next {
                    let w = try await core.store.logWindow()
                    try await channel.writeAndFlush(Response.error(.needsBootstrap,
                        "this node no longer retains entry \(next) (it keeps entries from \(w.firstIndex)); bootstrap from a snapshot").frame())
                    break
                }
                if let last = batch.last {
                    try await channel.writeAndFlush(Response.entries(batch).frame())
                    core.metrics.entriesStreamed.increment(by: batch.count)
                    next = last.index + 1
                }
                if ContinuousClock.now - lastHeartbeat >= .seconds(1) {
                    let head = try await core.store.head()
                    try await channel.writeAndFlush(Response.heartbeat(head: head.index, rootTimeNs: core.rootTimeNs).frame())
                    lastHeartbeat = ContinuousClock.now
                }
                if batch.isEmpty {
                    guard await wakeups.next() != nil else { break }
                }
            }
        } catch {
            logger.info("subscriber stream ended", metadata: ["peer": "\(peer)", "error": "\(error)"])
        }
        logger.info("subscriber disconnected", metadata: ["peer": "\(peer)", "sent-up-to": "\(next - 1)"])
        try? await channel.close()
    }

    /// Sends a consistent copy of the environment: `snapshotBegin(index, hash, size)`,
    /// 1 MiB chunks, `snapshotEnd`. Concurrent requests wait in a queue. The copy and the
    /// file reads run on the store's background thread.
    static func snapshot(channel: Channel, core: NodeCore, logger: Logger, peer: String) async {
        do {
            let queued = await core.snapshots.queued
            logger.info("snapshot requested", metadata: ["peer": "\(peer)", "queued-before-it": "\(queued)"])
            try await core.snapshots.run {
                logger.info("snapshot started", metadata: ["peer": "\(peer)"])
                try await core.store.withSnapshot { file in
                    try await channel.writeAndFlush(Response.snapshotBegin(index: file.head.index, hash: file.head.hash, size: file.size).frame())
                    var offset: UInt64 = 0
                    while true {
                        let chunk = try await file.read(at: offset, upTo: 1 << 20)
                        if chunk.isEmpty { break }
                        offset += UInt64(chunk.count)
                        try await channel.writeAndFlush(Response.snapshotChunk(chunk).frame())
                    }
                    try await channel.writeAndFlush(Response.snapshotEnd.frame())
                    core.metrics.snapshotsServed.increment()
                    logger.info("snapshot sent", metadata: ["peer": "\(peer)", "index": "\(file.head.index)", "bytes": "\(file.size)"])
                }
            }
        } catch {
            logger.error("snapshot failed", metadata: ["peer": "\(peer)", "error": "\(error)"])
            try? await channel.writeAndFlush(Response.error(.storageError, "snapshot failed: \(error)").frame())
        }
        try? await channel.close()
    }
}
