import KTFormats
import NIOConcurrencyHelpers
import NIOCore

/// Reads the newest timestamp in KT's update log through its HTTP RPC (`ulog_list`: each
/// file's header holds the newest timestamp flushed to it), one connection a reading, to
/// the address the replication stream connected to (a name that resolves to several KT
/// servers must not answer for another one). A reading is needed whenever a heartbeat would
/// vouch past what the last one covered, beyond the last update sent (`WithheldUpdateWatch`):
/// about once a second while KT sends heartbeats and no update.
struct KTLogCheck: Sendable {
    let rpc: KTRPCClient
    let schedule: NIOLockedValueBox<KTLogCheckSchedule>

    /// The newest timestamp of KT's update log; a listing with no file is refused (KT
    /// replicating has one at least).
    func newestLogged(at address: SocketAddress?) async throws -> UInt64 {
        try await rpc.withConnection(to: address) { try await Self.newest($0) }
    }

    /// One `ulog_list` call: the largest of the files' `size:timestamp` columns.
    static func newest(_ connection: KTRPCConnection) async throws -> UInt64 {
        let answer = try await connection.call("ulog_list")
        guard answer.status == 200 else { throw KTRPCError.unexpected("ulog_list answered \(answer.error)") }
        return try newest(of: answer)
    }

    static func newest(of answer: KTRPCAnswer) throws -> UInt64 {
        guard !answer.columns.isEmpty else { throw KTRPCError.unexpected("ulog_list listed no update-log file") }
        var newest: UInt64 = 0
        for value in answer.columns.values {
            guard let colon = value.lastIndex(of: UInt8(ascii: ":")),
                  let ts = UInt64(String(decoding: value[(colon + 1)...], as: UTF8.self)) else {
                throw KTRPCError.unexpected("ulog_list column '\(String(decoding: value.prefix(64), as: UTF8.self))' is not SIZE:TIMESTAMP")
            }
            newest = max(newest, ts)
        }
        return newest
    }
}

/// When the update log is read next, across a source's connections: at most once a
/// second, and after a failure, or a reading slower than `slow` (it holds the stream, and
/// a held stream asks for another), only every `retryAfter`.
struct KTLogCheckSchedule: Sendable {
    static let interval: Duration = .seconds(1)
    static let retryAfter: Duration = .seconds(30)
    static let slow: Duration = .seconds(1)

    private var last: ContinuousClock.Instant?
    private var wait: Duration = .zero
    /// The last reading failed: heartbeats vouch on their own until one works.
    private(set) var failing = false

    func due(at now: ContinuousClock.Instant) -> Bool {
        guard let last else { return true }
        return now - last >= wait
    }

    mutating func done(at now: ContinuousClock.Instant, took: Duration, ok: Bool) {
        last = now
        failing = !ok
        wait = !ok || took > Self.slow ? Self.retryAfter : Self.interval
    }
}
