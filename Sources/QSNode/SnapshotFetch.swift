import Logging
import NIOCore
import QSClient
import QSNet
import QSStore
import QSWire

/// A frame channel to `up` (TCP or Unix socket).
func openFrameChannel(to up: Endpoint, group: any EventLoopGroup) async throws -> NIOAsyncChannel<Frame, Frame> {
    switch up {
    case let .tcp(host, port): return try await openFrameChannel(host: host, port: port, unixPath: nil, group: group)
    case let .unix(path): return try await openFrameChannel(host: nil, port: 0, unixPath: path, group: group)
    }
}

/// Receives `up`'s snapshot (the write protocol's `snapshot` request, with `token`) into
/// `file`, checking with `checkRoom` that its announced size fits before any of it is
/// written, and logging progress every 5 s. Returns the index and hash it stands at and
/// its size. The one snapshot client: a replica's bootstrap and a root cluster member's
/// catch-up from a peer (`Store.installSnapshot` checks and installs what it received).
func receiveSnapshot(from up: Endpoint, token: [UInt8], group: any EventLoopGroup, into file: SnapshotWriter,
                     checkRoom: @Sendable (UInt64) throws -> Void, logger: Logger) async throws -> (index: UInt64, hash: [UInt8], size: UInt64) {
    let channel = try await openFrameChannel(to: up, group: group)
    return try await channel.executeThenClose { inbound, outbound in
        try await outbound.write(Request.snapshot(token: token).frame())
        var begin: (UInt64, [UInt8], UInt64)?
        var received: UInt64 = 0
        let started = ContinuousClock.now
        var lastReport = started
        for try await frame in inbound {
            switch try Response.decode(frame) {
            case let .snapshotBegin(index, hash, size):
                try checkRoom(size)
                begin = (index, hash, size)
            case let .snapshotChunk(bytes):
                try await file.write(bytes)
                received += UInt64(bytes.count)
                if ContinuousClock.now - lastReport >= .seconds(5), let total = begin?.2, total > 0 {
                    lastReport = ContinuousClock.now
                    let rate = Double(received) / max((lastReport - started).seconds, 0.001)
                    logger.info("snapshot progress", metadata: [
                        "from": "\(up)", "received-bytes": "\(received)", "total-bytes": "\(total)",
                        "percent": "\(received * 100 / total)", "bytes-per-second": "\(Int(rate))",
                        "seconds-left": "\(Int(Double(total - min(received, total)) / max(rate, 1)))",
                    ])
                }
            case .snapshotEnd:
                guard let begin, received == begin.2 else {
                    throw ReplicaService.FollowEnd.refused(nil, "snapshot ended after \(received) bytes, announced \(begin?.2 ?? 0)")
                }
                return begin
            case let .error(code, message): throw ReplicaService.FollowEnd.refused(ErrorCode(rawValue: code), message)
            default: throw ReplicaService.FollowEnd.refused(nil, "unexpected frame in a snapshot")
            }
        }
        throw ReplicaService.FollowEnd.closed
    }
}

/// Refuses a snapshot of `size` bytes before any of it is written when there is not
/// room for it and a margin (a tenth, at least 1 MiB) twice over: once staged (in
/// `--staging-dir`), once installed in the data directory. The error is a disk-full
/// one, so the caller waits instead of fetching the snapshot again every second.
func checkSnapshotRoom(_ store: Store, for size: UInt64) throws {
    let one = size + max(size / 10, 1 << 20)
    let places = store.stagingDirectory == store.directory ? [(store.directory, 2 * one)]
        : [(store.stagingDirectory, one), (store.directory, one)]
    for (dir, need) in places {
        guard let free = Store.freeBytes(at: dir), free < need else { continue }
        let error = StoreError.diskFull("a snapshot of \(size) bytes needs about \(need) bytes free in \(dir), which has \(free)")
        store.writeHealth.note(error)
        throw error
    }
}
