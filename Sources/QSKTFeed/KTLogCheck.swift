import KTFormats
import NIOConcurrencyHelpers
import NIOCore

/// Reads the newest timestamp in KT's update log through its HTTP RPC (`ulog_list`: each
/// file's header holds the newest timestamp flushed to it), on one connection kept open for
/// a replication stream's life (`KTLogConnection`), to the address the stream connected to
/// (a name that resolves to several KT servers must not answer for another one). A reading
/// is needed whenever a heartbeat would vouch past what the last one covered, beyond the
/// last update sent (`WithheldUpdateWatch`): about once a second while KT sends heartbeats
/// and no update.
struct KTLogCheck: Sendable {
    let rpc: KTRPCClient
    let schedule: NIOLockedValueBox<KTLogCheckSchedule>
    let connection: KTLogConnection

    /// The newest timestamp of KT's update log; a listing with no file is refused (KT
    /// replicating has one at least).
    func newestLogged(at address: SocketAddress?) async throws -> UInt64 {
        try await connection.newest(at: address)
    }

    /// The largest of a `ulog_list` answer's `size:timestamp` columns.
    static func newest(of answer: KTRPCAnswer) throws -> UInt64 {
        guard answer.status == 200 else { throw KTRPCError.unexpected("ulog_list answered \(answer.error)") }
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

/// One connection to KT's HTTP RPC for a replication stream's update-log readings, kept
/// open between them by a task of the stream's own (`serve`): an idle bridge reads about
/// once a second, and a connection a reading was churn on KT (a connect, an accept and a
/// close a second, each in a default ktserver's log). A reading on a connection that served
/// one before and finds it broken (KT closes a keep-alive connection idle past its
/// `-tout`, 30 s by default, which a bridge receiving updates leaves between readings) is
/// tried once more on a new connection before it counts as failed; a stream that moved to
/// another address of the name gets a connection to it. The answer's own timeout is the
/// RPC client's, counted only while an answer is owed (`AnswerTimeout`).
final class KTLogConnection: Sendable {
    private struct Request: Sendable {
        let address: SocketAddress?
        let answer: CheckedContinuation<UInt64, any Error>
    }

    let rpc: KTRPCClient
    private let requests: AsyncStream<Request>
    private let queue: AsyncStream<Request>.Continuation

    init(rpc: KTRPCClient) {
        self.rpc = rpc
        (requests, queue) = AsyncStream.makeStream(of: Request.self)
    }

    /// One reading, served by `serve`, which must be running.
    func newest(at address: SocketAddress?) async throws -> UInt64 {
        try await withCheckedThrowingContinuation { answer in
            if case .terminated = queue.yield(Request(address: address, answer: answer)) {
                answer.resume(throwing: CancellationError())
            }
        }
    }

    /// No more readings: `serve` closes the connection and returns.
    func finish() { queue.finish() }

    /// Serves the readings in order until `finish` or the task's cancellation; answers
    /// every request it takes exactly once.
    func serve() async {
        var waiting = requests.makeAsyncIterator()
        var unanswered: Request?
        var retried = false
        while !Task.isCancelled {
            if unanswered == nil {
                guard let next = await waiting.next() else { return }
                unanswered = next
            }
            let address = unanswered?.address
            var staleConnection = false
            do {
                try await rpc.withConnection(to: address) { connection in
                    var reused = false
                    while let request = unanswered {
                        let answer: KTRPCAnswer
                        do {
                            answer = try await connection.call("ulog_list")
                        } catch {
                            staleConnection = reused && !retried
                            throw error
                        }
                        unanswered = nil
                        retried = false
                        request.answer.resume(with: Result { try KTLogCheck.newest(of: answer) })
                        reused = true
                        guard let next = await waiting.next() else { return }
                        unanswered = next
                        if next.address != address { return }
                    }
                }
            } catch {
                guard let request = unanswered else { continue }
                if staleConnection && !Task.isCancelled {
                    retried = true
                    continue
                }
                unanswered = nil
                retried = false
                request.answer.resume(throwing: error)
            }
        }
        unanswered?.answer.resume(throwing: CancellationError())
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
