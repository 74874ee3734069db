import Logging
import Metrics
import NIOCore
import QSClient
import QSNet
import QSStore
import QSWire
import NIOConcurrencyHelpers

/// A frame channel to `up` (TCP or Unix socket).
func openFrameChannel(to up: Endpoint, arrivals: ByteArrivals? = nil, group: any EventLoopGroup) async throws -> NIOAsyncChannel<Frame, Frame> {
    switch up {
    case let .tcp(host, port): return try await openFrameChannel(host: host, port: port, unixPath: nil, arrivals: arrivals, group: group)
    case let .unix(path): return try await openFrameChannel(host: nil, port: 0, unixPath: path, arrivals: arrivals, group: group)
    }
}

/// A snapshot stream channel to `up` (TCP or Unix socket), reading up to `maxReadBytes` at a time.
func openSnapshotChannel(to up: Endpoint, maxReadBytes: Int, group: any EventLoopGroup) async throws -> NIOAsyncChannel<SnapshotStreamPart, Frame> {
    switch up {
    case let .tcp(host, port): return try await openSnapshotChannel(host: host, port: port, unixPath: nil, maxReadBytes: maxReadBytes, group: group)
    case let .unix(path): return try await openSnapshotChannel(host: nil, port: 0, unixPath: path, maxReadBytes: maxReadBytes, group: group)
    }
}

/// Receives `up`'s snapshot (the write protocol's `snapshotFrom` request, with `token`)
/// into `file`, checking with `checkRoom` that its announced size fits before any of it is
/// written, and logging progress every 5 s. When `file` holds part of a snapshot from a
/// transfer cut off, asks for the rest of it: the upstream continues when its copy is the
/// same (same head, size and first bytes), else it sends its snapshot from the start and
/// the part held is dropped (logged). An upstream that predates `snapshotFrom` is asked
/// with `snapshot` instead. Returns the index and hash it stands at, its size, and the
/// offset it resumed from (0: the whole). The one snapshot client: a replica's bootstrap
/// and a root cluster member's catch-up from a peer (`Store.installSnapshot` checks and
/// installs what it received).
func receiveSnapshot(from up: Endpoint, token: [UInt8], group: any EventLoopGroup, into file: SnapshotWriter,
                     checkRoom: @Sendable (_ size: UInt64, _ held: UInt64) throws -> Void, logger: Logger,
                     tally: SnapshotTally? = nil) async throws -> (index: UInt64, hash: [UInt8], size: UInt64, resumedFrom: UInt64) {
    let held = await file.held()
    if let held {
        logger.info("snapshot: asking the upstream to resume the one held", metadata: [
            "from": "\(up)", "index": "\(held.index)", "held-bytes": "\(held.offset)", "total-bytes": "\(held.size)"])
    }
    var request = Request.snapshotFrom(token: token, resume: held)
    while true {
        // Reads of up to a chunk and a bit (1 MiB chunks and their headers).
        let channel = try await openSnapshotChannel(to: up, maxReadBytes: 2 * Store.snapshotChunkBytes, group: group)
        let outcome: (index: UInt64, hash: [UInt8], size: UInt64, resumedFrom: UInt64)? = try await channel.executeThenClose { inbound, outbound in
            try await outbound.write(request.frame())
            var begin: (index: UInt64, hash: [UInt8], size: UInt64, resumedFrom: UInt64)?
            var received: UInt64 = 0
            let started = ContinuousClock.now
            var lastReport = started
            var toldWaiting = false
            /// Begun with SnapshotStart: it must end with SnapshotDone (the digest).
            var resumable = false
            /// Writes bytes of the snapshot to the file, from the socket's buffer.
            func took(_ bytes: some SnapshotBytes, count: Int) async throws {
                guard let total = begin?.size else { throw ReplicaService.FollowEnd.refused(nil, "a snapshot chunk before its start") }
                guard UInt64(count) <= total - received else {
                    throw ReplicaService.FollowEnd.refused(nil, "the snapshot goes on past the \(total) bytes announced")
                }
                if count == 0 { return }
                try await file.write(bytes)
                received += UInt64(count)
                tally?.add(count)
                if ContinuousClock.now - lastReport >= .seconds(5), total > 0 {
                    lastReport = ContinuousClock.now
                    let fetched = received - (begin?.resumedFrom ?? 0)
                    let rate = Double(fetched) / max((lastReport - started).seconds, 0.001)
                    logger.info("snapshot progress", metadata: [
                        "from": "\(up)", "received-bytes": "\(received)", "total-bytes": "\(total)",
                        "percent": "\(received * 100 / total)", "bytes-per-second": "\(Int(rate))",
                        "seconds-left": "\(Int(Double(total - min(received, total)) / max(rate, 1)))",
                    ])
                }
            }
            /// No store's snapshot is empty (an LMDB environment holds its meta pages, a
            /// RocksDB checkpoint its manifest): one announced so would fail later, as an
            /// LMDB open's "Bad file descriptor".
            func refuseEmpty(_ size: UInt64) throws {
                guard size == 0 else { return }
                throw ReplicaService.FollowEnd.refused(nil, "the upstream announced an empty snapshot (0 bytes): no store's snapshot is empty, so it is not a QS node's")
            }
            for try await part in inbound {
                let frame: Frame
                switch part {
                case let .chunkBytes(bytes):
                    // A chunk's payload as it arrives: written from the socket's buffer.
                    try await took(SocketSnapshotBytes(buffer: bytes), count: bytes.readableBytes)
                    continue
                case let .frame(whole):
                    frame = whole
                }
                switch try Response.decode(frame) {
                case let .snapshotStart(index, hash, size, offset):
                    try refuseEmpty(size)
                    if offset > 0 {
                        guard let held, held.index == index, held.hash == hash, held.size == size, held.offset == offset else {
                            throw ReplicaService.FollowEnd.refused(nil, "the upstream resumed at \(offset) bytes a snapshot that is not the one held")
                        }
                        logger.notice("snapshot resumed", metadata: [
                            "from": "\(up)", "index": "\(index)", "resumed-at-bytes": "\(offset)", "total-bytes": "\(size)"])
                    } else if let held {
                        let why = held.index != index || held.hash != hash
                            ? "it now stands at index \(index), the snapshot held at \(held.index)"
                            : "its copy at index \(index) is not the same bytes (\(size) bytes, the one held \(held.size))"
                        logger.notice("snapshot: the upstream cannot resume the one held: starting over", metadata: [
                            "from": "\(up)", "reason": "\(why)", "dropped-bytes": "\(held.offset)"])
                    }
                    // The bytes held are in the room asked for: kept when resumed, given back
                    // when started over (a partial kept across attempts held room for good).
                    try checkRoom(size, held?.offset ?? 0)
                    try await file.begin(index: index, hash: hash, size: size, offset: offset)
                    resumable = true
                    begin = (index, hash, size, offset)
                    tally?.began(size: size, offset: offset)
                    received = offset
                case let .snapshotBegin(index, hash, size):
                    try refuseEmpty(size)
                    // The bytes held are in the room asked for: kept when resumed, given back
                    // when started over (a partial kept across attempts held room for good).
                    try checkRoom(size, held?.offset ?? 0)
                    try await file.begin(index: index, hash: hash, size: size, offset: 0)
                    begin = (index, hash, size, 0)
                    tally?.began(size: size, offset: 0)
                case let .snapshotWaiting(queued):
                    if begin == nil { tally?.waiting(queued: Int(queued)) }
                    if begin == nil && !toldWaiting {
                        toldWaiting = true
                        logger.info("snapshot: waiting for the upstream (it serves one snapshot at a time)",
                                    metadata: ["from": "\(up)", "queued-there": "\(queued)"])
                    }
                case let .snapshotChunk(bytes):
                    try await took(bytes, count: bytes.count)
                case let .snapshotDone(digest):
                    guard let begin, received == begin.size else {
                        throw ReplicaService.FollowEnd.refused(nil, "snapshot ended after \(received) bytes, announced \(begin?.size ?? 0)")
                    }
                    try await file.expect(digest: digest)
                    return begin
                case .snapshotEnd:
                    // The resumable exchange (SnapshotStart) ends with SnapshotDone and the
                    // digest of the whole: an end without it would skip the digest check.
                    guard !resumable else {
                        throw ReplicaService.FollowEnd.refused(nil, "a snapshot begun with SnapshotStart ended without its digest (SnapshotEnd instead of SnapshotDone)")
                    }
                    guard let begin, received == begin.size else {
                        throw ReplicaService.FollowEnd.refused(nil, "snapshot ended after \(received) bytes, announced \(begin?.size ?? 0)")
                    }
                    return begin
                case let .error(code, message):
                    if case .snapshotFrom = request, begin == nil, code == ErrorCode.malformed.rawValue {
                        // A node older than resumable snapshots: ask it the old way.
                        logger.info("snapshot: the upstream predates resumable snapshots; asking for a whole one", metadata: ["from": "\(up)"])
                        return nil
                    }
                    throw ReplicaService.FollowEnd.refused(ErrorCode(rawValue: code), message)
                default: throw ReplicaService.FollowEnd.refused(nil, "unexpected frame in a snapshot")
                }
            }
            throw ReplicaService.FollowEnd.closed
        }
        if let outcome { return outcome }
        request = .snapshot(token: token)
    }
}

/// Bytes of snapshot chunks received: counted into a metric and kept for the caller.
final class SnapshotTally: Sendable {
    /// Where one transfer stands: bytes fetched by it, the snapshot's size once announced,
    /// the offset it resumed from, and the upstream's queue while it waits its turn.
    struct State: Sendable {
        var fetched = 0
        var size: UInt64?
        var resumedFrom: UInt64 = 0
        var queuedThere: Int?
    }

    private let counter: Counter
    private let state = NIOLockedValueBox(State())

    init(_ counter: Counter) { self.counter = counter }

    func add(_ n: Int) {
        counter.increment(by: n)
        state.withLockedValue { $0.fetched += n }
    }

    func began(size: UInt64, offset: UInt64) {
        state.withLockedValue {
            $0.size = size
            $0.resumedFrom = offset
            $0.queuedThere = nil
        }
    }

    func waiting(queued: Int) {
        state.withLockedValue { $0.queuedThere = queued }
    }

    var total: Int { state.withLockedValue { $0.fetched } }
    var current: State { state.withLockedValue { $0 } }
}

/// Refuses a snapshot of `size` bytes before any of it is written when there is not
/// room for it and a margin (a tenth, at least 1 MiB) twice over: once staged (in
/// `--staging-dir`), once installed in the data directory. The error is a disk-full
/// one, so the caller waits instead of fetching the snapshot again every second.
func checkSnapshotRoom(_ store: Store, for size: UInt64, held: UInt64 = 0) throws {
    let one = size + max(size / 10, 1 << 20)
    let staged = one - min(held, one)
    let places = store.stagingDirectory == store.directory ? [(store.directory, staged + one)]
        : [(store.stagingDirectory, staged), (store.directory, one)]
    for (dir, need) in places {
        guard let free = Store.freeBytes(at: dir), free < need else { continue }
        let error = StoreError.diskFull("a snapshot of \(size) bytes needs about \(need) bytes free in \(dir), which has \(free)")
        store.writeHealth.note(error)
        throw error
    }
}
