import Foundation
import KTFormats
import Logging
import QSKTFeed

/// Records a live KT replication feed into a file in the `stream.bin` format (the
/// acceptance byte, then the update and heartbeat frames as the server sent them), plus
/// `FILE.meta.json`. A read-only client (`KTReplicationClient`): it answers heartbeats and
/// writes nothing else to the server. A lost connection or a damaged frame is not
/// recorded; the recorder reconnects and resumes after the last recorded timestamp.
public struct KTRecorder: Sendable {
    public let client: KTReplicationClient
    public let path: String
    public let stop: StopConditions
    let logger: Logger

    public init(client: KTReplicationClient, path: String, stop: StopConditions, logger: Logger) {
        self.client = client
        self.path = path
        self.stop = stop
        self.logger = logger
    }

    struct Stop: Error {
        let reason: String
    }

    /// Records the updates after `from` until a stop condition holds or the task is
    /// cancelled (a signal); returns the final sidecar. Throws, after ending the file at a
    /// frame boundary, when the server refuses or the sid clashes.
    public func run(from: UInt64) async throws -> RecordingMeta {
        let session = try RecordingSession(path: path, meta: RecordingMeta(format: "kt-replication", source: client.name, sid: client.sid, from: from),
                                           stop: stop)
        while true {
            if Task.isCancelled { return try session.finish(stoppedBy: "signal", complete: true) }
            if session.expired { return try session.finish(stoppedBy: "duration", complete: true) }
            do {
                try await withDeadline(session) {
                    try await client.stream(after: session.resumePosition) { frame in
                        let reason: String?
                        switch frame {
                        case .accepted, .refused:
                            session.connected = true
                            try session.writePreamble(frame.encoded())
                            reason = nil
                        case let .heartbeat(ts):
                            reason = try session.heartbeat(frame.encoded(), position: ts)
                        case let .update(ts, message):
                            let db = message.count >= 4 ? String(UInt16(message[2]) << 8 | UInt16(message[3])) : "undecodable"
                            reason = try session.update(frame.encoded(), first: ts, last: ts, keys: [db])
                        }
                        if let reason { throw Stop(reason: reason) }
                    }
                }
            } catch let stop as Stop {
                return try session.finish(stoppedBy: stop.reason, complete: true)
            } catch let failure as KTReplicationClient.Failure {
                switch failure {
                case .refused, .sidClash, .withheld, .tooLarge:
                    _ = try session.finish(stoppedBy: "error", complete: false)
                    throw RecordingError("\(failure)")
                case .damaged, .closed:
                    if Task.isCancelled { continue }
                    logger.warning("replication interrupted; resuming after the last recorded timestamp",
                                   metadata: ["source": "\(client.name)", "error": "\(failure)", "after": "\(session.resumePosition)"])
                }
            } catch {
                if Task.isCancelled { continue }
                if !session.connected {
                    _ = try session.finish(stoppedBy: "error", complete: false)
                    throw RecordingError("cannot replicate from \(client.name): \(error)")
                }
                logger.warning("replication failed; retrying", metadata: ["source": "\(client.name)", "error": "\(error)"])
            }
            try? await Task.sleep(for: session.backoff.next())
        }
    }
}
