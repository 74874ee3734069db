import ArgumentParser
import Foundation
import KTFormats
import Logging
import QSClient
import QSKTFeed
import QSRecording
import QSDaemon
import QSNet
import UnixSignals

struct RecordCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "record",
        abstract: "Record a live KT replication feed or QS log feed into a file, for replay.",
        discussion: """
            kt://HOST:PORT records KT's replication stream in the stream.bin format \
            (qsktbridge --source capture:FILE replays it); qs://HOST:PORT records a QS node's \
            log feed as a QS capture (docs/recordings.md). Beside FILE, FILE.meta.json says \
            what was recorded. A read-only client: it answers heartbeats and writes nothing \
            to the server. It stops at --count, --until-ts or --duration, else on SIGINT or \
            SIGTERM, always at a frame boundary, and fsyncs the file.
            """
    )

    @Option(help: ArgumentHelp("kt://HOST:PORT (KT replication) or qs://HOST:PORT (a QS node's log feed). (env: QS_SOURCE)", valueName: "source"))
    var source: String = QSEnv.string("QS_SOURCE") ?? ""

    @Option(help: ArgumentHelp("The recording to write (replaced if it exists); FILE.meta.json goes beside it. (env: QS_OUT)", valueName: "file"))
    var out: String = QSEnv.string("QS_OUT") ?? ""

    @Option(help: ArgumentHelp("KT: the server id presented to KT; must differ from the KT server's -sid and every writer's. (env: QS_SID)", valueName: "n"))
    var sid: UInt16 = UInt16(QSEnv.string("QS_SID") ?? "") ?? 65000

    @Option(help: ArgumentHelp("Record the updates after this position: a KT timestamp (default: now; 0 for everything the server still has) or a QS log index (default: 0). (env: QS_FROM)", valueName: "pos|now"))
    var from: String = QSEnv.string("QS_FROM") ?? ""

    @Option(help: ArgumentHelp("Stop after this long, e.g. 10m. (env: QS_DURATION)", valueName: "duration"))
    var duration: String = QSEnv.string("QS_DURATION") ?? ""

    @Option(help: ArgumentHelp("Stop once the source reaches this position (a KT timestamp, a QS log index); later updates are not recorded. (env: QS_UNTIL_TS)", valueName: "pos"))
    var untilTs: String = QSEnv.string("QS_UNTIL_TS") ?? ""

    @Option(help: ArgumentHelp("Stop after this many updates (KT update messages, QS log entries). (env: QS_COUNT)", valueName: "n"))
    var count: String = QSEnv.string("QS_COUNT") ?? ""

    @Option(help: ArgumentHelp("Reconnect after this long without a frame or heartbeat. (env: QS_SOURCE_TIMEOUT)", valueName: "duration"))
    var sourceTimeout: String = QSEnv.string("QS_SOURCE_TIMEOUT") ?? "10s"

    @Option(help: ArgumentHelp("Largest KT update message accepted; a larger one is a corrupt frame, not recorded. (env: QS_MAX_MESSAGE_BYTES)", valueName: "size"))
    var maxMessageBytes: String = QSEnv.string("QS_MAX_MESSAGE_BYTES") ?? "64MiB"

    enum Source {
        case kt(host: String, port: Int)
        case qs(host: String, port: Int)
    }

    func parsedSource() throws -> Source {
        for (scheme, make) in [("kt://", { Source.kt(host: $0, port: $1) }), ("qs://", { Source.qs(host: $0, port: $1) })] as [(String, (String, Int) -> Source)]
        where source.hasPrefix(scheme) {
            guard case let .tcp(host, port) = try? Endpoint(parsing: String(source.dropFirst(scheme.count))), port > 0 else {
                throw ValidationError("--source '\(source)': expected \(scheme)HOST:PORT")
            }
            return make(host, port)
        }
        throw ValidationError("--source '\(source)' is not kt://HOST:PORT or qs://HOST:PORT (or set QS_SOURCE)")
    }

    func validate() throws {
        _ = try parsedSource()
        guard !out.isEmpty else { throw ValidationError("--out FILE is required (or set QS_OUT)") }
        guard from.isEmpty || from == "now" || UInt64(from) != nil else { throw ValidationError("--from '\(from)' is not a position or 'now'") }
        guard duration.isEmpty || parseDuration(duration) != nil else { throw ValidationError("--duration '\(duration)' is not a duration such as 10m") }
        guard parseDuration(sourceTimeout) ?? .zero > .zero else { throw ValidationError("--source-timeout '\(sourceTimeout)' is not a duration such as 10s") }
        guard parseByteSize(maxMessageBytes) ?? 0 > 0 else { throw ValidationError("--max-message-bytes '\(maxMessageBytes)' is not a size such as 64MiB") }
        guard count.isEmpty || Int(count) ?? 0 > 0 else { throw ValidationError("--count '\(count)' is not a positive number") }
        guard untilTs.isEmpty || UInt64(untilTs) != nil else { throw ValidationError("--until-ts '\(untilTs)' is not a position") }
    }

    func run() async throws {
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        let logger = Logger(label: "qsctl-record")
        let stop = StopConditions(count: Int(count), untilPosition: UInt64(untilTs), duration: duration.isEmpty ? nil : parseDuration(duration))
        let timeout = parseDuration(sourceTimeout) ?? .seconds(10)
        let recording: Task<RecordingMeta, any Error>
        switch try parsedSource() {
        case let .kt(host, port):
            let start = from.isEmpty || from == "now" ? KTClock.pure(nowMillis: UInt64(Date().timeIntervalSince1970 * 1000)) : UInt64(from) ?? 0
            let client = KTReplicationClient(host: host, port: port, sid: sid, timeout: timeout,
                                             maxMessageBytes: parseByteSize(maxMessageBytes) ?? 64 << 20)
            let recorder = KTRecorder(client: client, path: out, stop: stop, logger: logger)
            recording = Task { try await recorder.run(from: start) }
        case let .qs(host, port):
            let start = from == "now" ? nil : UInt64(from) ?? 0
            let subscription = LogSubscription(host: host, port: port, readTimeout: .nanoseconds(Int64(timeout.seconds * 1e9)))
            let recorder = QSRecorder(subscription: subscription, path: out, stop: stop, logger: logger)
            recording = Task { try await recorder.run(from: start) }
        }
        // SIGINT/SIGTERM cancel the recording, which ends the file at a frame boundary.
        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint)
        let watcher = Task {
            for await _ in signals {
                recording.cancel()
                return
            }
        }
        defer { watcher.cancel() }
        let meta: RecordingMeta
        do {
            meta = try await recording.value
        } catch {
            fail("\(error)")
            throw Exit.serverError
        }
        let span = meta.firstPosition.map { "positions \($0)…\(meta.lastPosition ?? $0)" } ?? "no updates"
        printLine("recorded \(meta.updates) updates in \(meta.frames) frames (\(meta.bytes) bytes) from \(meta.source), \(span); stopped by \(meta.stoppedBy ?? "?"); sidecar \(RecordingMeta.path(for: out))")
    }
}
