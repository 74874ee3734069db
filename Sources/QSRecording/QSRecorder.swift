import Foundation
import Logging
import QSClient
import QSCaptures
import QSModel
import QSWire

/// Records a QS node's log feed into a QS capture (`QSCapture`: a header, then the
/// subscription's Entries and Heartbeat frames as received), plus `FILE.meta.json`.
/// Read-only: it subscribes like a replica and sends nothing else. After a lost
/// connection it resubscribes after the last recorded entry, with its hash.
public struct QSRecorder: Sendable {
    public let subscription: LogSubscription
    public let path: String
    public let stop: StopConditions
    let logger: Logger

    public init(subscription: LogSubscription, path: String, stop: StopConditions, logger: Logger) {
        self.subscription = subscription
        self.path = path
        self.stop = stop
        self.logger = logger
    }

    struct Stop: Error {
        let reason: String
    }

    /// Where to subscribe: `index` (nil: the node's head now) and the chained hash there
    /// (32 zero bytes at 0).
    func start(at index: UInt64?) async throws -> (index: UInt64, hash: [UInt8]) {
        if index == 0 { return (0, Head.empty.hash) }
        let client: QSClient
        do {
            client = try await QSClient.connect(host: subscription.host, port: subscription.port, readToken: subscription.token)
        } catch {
            throw RecordingError("cannot connect to \(subscription.name): \(error)")
        }
        defer { Task { await client.close() } }
        guard let index else {
            let head = try await client.head()
            return (head.index, head.hash)
        }
        let list = try await client.entries(from: index, count: 1)
        guard let e = list.first, e.index == index else {
            throw RecordingError("\(subscription.name) has no log entry \(index) (not yet written, or trimmed): choose another --from")
        }
        return (index, e.hash)
    }

    /// Records the entries after `from` (nil: after the node's head now) until a stop
    /// condition holds or the task is cancelled (a signal); returns the final sidecar.
    public func run(from: UInt64?) async throws -> RecordingMeta {
        let start = try await start(at: from)
        let session = try RecordingSession(path: path, meta: RecordingMeta(format: "qs-log", source: subscription.name, sid: nil, from: start.index),
                                           stop: stop)
        session.resumeHash = start.hash
        try session.writePreamble(QSCapture.header(fromIndex: start.index, hash: start.hash))
        let subscription = self.subscription
        while true {
            if Task.isCancelled { return try session.finish(stoppedBy: "signal", complete: true) }
            if session.expired { return try session.finish(stoppedBy: "duration", complete: true) }
            do {
                try await withDeadline(session) {
                    try await subscription.stream(after: session.resumePosition, hash: session.resumeHash) { frame, response in
                        session.connected = true
                        var reason: String?
                        switch response {
                        case .heartbeat:
                            reason = try session.heartbeat(QSCapture.bytes(of: frame), position: session.resumePosition)
                        case let .entries(list):
                            guard let first = list.first, let last = list.last else { return }
                            let keys = list.map { (try? LogEntry.decode($0.bytes))?.origin.sourceID ?? "undecodable" }
                            reason = try session.update(QSCapture.bytes(of: frame), first: first.index, last: last.index, keys: keys)
                            session.resumeHash = last.hash
                        default:
                            return
                        }
                        if let reason { throw Stop(reason: reason) }
                    }
                }
            } catch let stop as Stop {
                return try session.finish(stoppedBy: stop.reason, complete: true)
            } catch let failure as LogSubscription.Failure {
                if case .refused = failure {
                    _ = try session.finish(stoppedBy: "error", complete: false)
                    throw RecordingError("\(failure)")
                }
                if Task.isCancelled { continue }
                logger.warning("subscription interrupted; resubscribing after the last recorded entry",
                               metadata: ["source": "\(subscription.name)", "error": "\(failure)", "after": "\(session.resumePosition)"])
            } catch {
                if Task.isCancelled { continue }
                if !session.connected {
                    _ = try session.finish(stoppedBy: "error", complete: false)
                    throw RecordingError("cannot subscribe to \(subscription.name): \(error)")
                }
                logger.warning("subscription failed; retrying", metadata: ["source": "\(subscription.name)", "error": "\(error)"])
            }
            try? await Task.sleep(for: session.backoff.next())
        }
    }
}
