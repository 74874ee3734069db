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
    /// The most entry bytes a subscription frame carries (an entry larger than this goes alone).
    static let frameBytes = 1 << 20

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
                // The entries as the frame carries them, written from the log's pages; at
                // most `frameBytes` a frame, so a subscriber that does not read holds one
                // such frame (and its copy in the socket's buffer), not megabytes.
                let batch = try await core.store.packedEntries(from: from, count: 1000, maxBytes: frameBytes)
                var first: UInt64?, last: UInt64?
                batch.forEach { index, _, _ in
                    if first == nil { first = index }
                    last = index
                }
                if let first, first != next {
                    let w = try await core.store.logWindow()
                    try await channel.writeAndFlush(Response.error(.needsBootstrap,
                        "this node no longer retains entry \(next) (it keeps entries from \(w.firstIndex)); bootstrap from a snapshot").frame())
                    break
                }
                if let last {
                    try await channel.writeAndFlush(Response.entriesFrame(batch))
                    core.metrics.entriesStreamed.increment(by: batch.count)
                    next = last + 1
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

    /// Sends a consistent copy of the environment (`Store.streamSnapshot`: LMDB's
    /// compacted copy straight from a pipe, no file). To a `snapshot` request:
    /// `snapshotBegin(index, hash, size)`, 1 MiB chunks, `snapshotEnd`. To `snapshotFrom`:
    /// `snapshotStart(index, hash, size, offset)`, the chunks from `offset` (the client's,
    /// when this node's copy is the one it holds part of, else 0), `snapshotDone(digest)`.
    /// Concurrent requests take turns in a queue, so several bootstrapping replicas do not
    /// thrash this node's page cache. Two chunks are in flight at most: the next one is
    /// read from the copy while the socket sends the last. Each chunk is read from the
    /// copy's pipe straight into the frame that is written to the socket
    /// (`EncodedSnapshotChunk`, `writeEncoded`): no copy between the pipe and the socket.
    static func snapshot(channel: Channel, core: NodeCore, resume: SnapshotResume?, resumable: Bool, logger: Logger, peer: String) async {
        // A `snapshotFrom` client hears every second that its snapshot is coming (older
        // clients would not know the frame): it may wait its turn longer than its idle timeout.
        let waiting: Task<Void, Never>? = !resumable ? nil : Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                if Task.isCancelled { break }
                let queued = await core.snapshots.queued
                try? await channel.writeAndFlush(Response.snapshotWaiting(queued: UInt32(queued)).frame())
            }
        }
        defer { waiting?.cancel() }
        do {
            let queued = await core.snapshots.queued
            logger.info("snapshot requested", metadata: ["peer": "\(peer)", "queued-before-it": "\(queued)",
                                                        "resume-at-bytes": "\(resume?.offset ?? 0)"])
            try await core.snapshots.run {
                logger.info("snapshot started", metadata: ["peer": "\(peer)"])
                let started = ContinuousClock.now
                var head = Head(index: 0, hash: [], commitTimeNs: 0)
                var from: UInt64 = 0, sent: UInt64 = 0
                var inFlight: EventLoopFuture<Void>?
                let allocator = channel.allocator
                let digest = try await core.store.streamSnapshot(resume: resume, buffers: {
                    ChunkFrame(EncodedSnapshotChunk(capacity: Store.snapshotChunkBytes, allocator: allocator))
                }, start: { s in
                    waiting?.cancel()
                    await waiting?.value
                    head = s.head
                    from = s.offset
                    if let why = s.refused {
                        core.metrics.snapshotResumesRefused.increment()
                        logger.notice("snapshot resume refused: sending it from the start", metadata: [
                            "peer": "\(peer)", "reason": "\(why)"])
                    } else if s.offset > 0 {
                        core.metrics.snapshotResumes.increment()
                        logger.info("snapshot resumed", metadata: ["peer": "\(peer)", "at-bytes": "\(s.offset)", "total-bytes": "\(s.size)"])
                    }
                    let begin = resumable ? Response.snapshotStart(index: s.head.index, hash: s.head.hash, size: s.size, offset: s.offset)
                        : Response.snapshotBegin(index: s.head.index, hash: s.head.hash, size: s.size)
                    try await channel.writeAndFlush(begin.frame())
                }, chunk: { chunk in
                    let written = writeEncoded(chunk.encoded.frame, on: channel)
                    try await inFlight?.get()
                    inFlight = written
                    sent += UInt64(chunk.encoded.payloadCount)
                    core.metrics.snapshotBytesSent.increment(by: chunk.encoded.payloadCount)
                })
                try await inFlight?.get()
                try await channel.writeAndFlush((resumable ? Response.snapshotDone(digest: digest) : .snapshotEnd).frame())
                core.metrics.snapshotsServed.increment()
                let seconds = max((ContinuousClock.now - started).seconds, 0.001)
                logger.info("snapshot sent", metadata: ["peer": "\(peer)", "index": "\(head.index)", "from-bytes": "\(from)",
                                                       "bytes": "\(sent)", "milliseconds": "\(Int(seconds * 1000))",
                                                       "bytes-per-second": "\(Int(Double(sent) / seconds))"])
            }
        } catch {
            logger.error("snapshot failed", metadata: ["peer": "\(peer)", "error": "\(error)"])
            try? await channel.writeAndFlush(Response.error(.storageError, "snapshot failed: \(error)").frame())
        }
        try? await channel.close()
    }

    /// Writes `frame`, a frame encoded already (`EncodedSnapshotChunk`), as it is: from the
    /// place of the channel's `FrameWriter` in the pipeline, so it goes on to the socket
    /// past the encoder, in order with the frames written before it.
    static func writeEncoded(_ frame: ByteBuffer, on channel: Channel) -> EventLoopFuture<Void> {
        channel.eventLoop.flatSubmit {
            let promise = channel.eventLoop.makePromise(of: Void.self)
            do {
                let encoder = try channel.pipeline.syncOperations.context(handlerType: FrameWriter.self)
                encoder.writeAndFlush(NIOAny(frame), promise: promise)
            } catch {
                promise.fail(error)
            }
            return promise.futureResult
        }
    }
}

/// A snapshot chunk read from the copy into the frame that goes to the socket as it is.
struct ChunkFrame: SnapshotBuffer {
    var encoded: EncodedSnapshotChunk

    init(_ encoded: EncodedSnapshotChunk) { self.encoded = encoded }

    func withSnapshotBytes<T>(_ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        try encoded.withPayload(body)
    }

    mutating func appendSnapshotBytes(upTo count: Int, _ fill: (UnsafeMutableRawBufferPointer) throws -> Int) rethrows {
        try encoded.appendPayload(upTo: count, fill)
    }
}

/// Bytes of a snapshot chunk as the socket delivered them (`SnapshotStreamPart.chunkBytes`):
/// written to the file from there.
struct SocketSnapshotBytes: SnapshotBytes {
    let buffer: ByteBuffer

    func withSnapshotBytes<T>(_ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        try buffer.withUnsafeReadableBytes(body)
    }
}
