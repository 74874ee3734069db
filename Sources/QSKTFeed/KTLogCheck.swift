import KTFormats

/// Reads the newest timestamp in KT's update log through its HTTP RPC (`ulog_list`: each
/// file's header holds the newest timestamp flushed to it), one connection a reading:
/// readings are rare (`WithheldUpdateWatch` asks after a connect or a stall, not while
/// heartbeats come steadily), and ktserver closes an idle keep-alive connection after a
/// few seconds anyway.
struct KTLogCheck: Sendable {
    let rpc: KTRPCClient

    /// The newest timestamp of KT's update log (0 when it has none).
    func newestLogged() async throws -> UInt64 {
        try await rpc.withConnection { try await Self.newest($0) }
    }

    /// One `ulog_list` call: the largest of the files' `size:timestamp` columns.
    static func newest(_ connection: KTRPCConnection) async throws -> UInt64 {
        let answer = try await connection.call("ulog_list")
        guard answer.status == 200 else { throw KTRPCError.unexpected("ulog_list answered \(answer.error)") }
        return try newest(of: answer)
    }

    static func newest(of answer: KTRPCAnswer) throws -> UInt64 {
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

/// When the replication reader asks KT's update log next: once a second while heartbeats
/// propose to vouch past the last update, and after a failure only every `retryAfter`.
struct KTLogCheckSchedule {
    static let interval: Duration = .seconds(1)
    static let retryAfter: Duration = .seconds(30)

    private var last: ContinuousClock.Instant?
    /// The last read failed: heartbeats vouch on their own until one works.
    private(set) var failing = false

    func due(at now: ContinuousClock.Instant) -> Bool {
        guard let last else { return true }
        return now - last >= (failing ? Self.retryAfter : Self.interval)
    }

    mutating func done(at now: ContinuousClock.Instant, ok: Bool) {
        last = now
        failing = !ok
    }
}
