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

    @Option(help: ArgumentHelp("kt://HOST:PORT (KT replication) or qs://HOST:PORT (a QS node's log feed). (env: QS_CTL_RECORD_SOURCE)", valueName: "source"))
    var source: OrNone<RecordSource> = QSEnv.value("QS_CTL_RECORD_SOURCE", .none, flag: "--source")

    @Option(help: ArgumentHelp("The recording to write (replaced if it exists); FILE.meta.json goes beside it. (env: QS_CTL_RECORD_OUT)", valueName: "file"))
    var out: String = QSEnv.string("QS_CTL_RECORD_OUT") ?? ""

    @Option(help: ArgumentHelp("KT: the server id presented to KT; must differ from the KT server's -sid and every writer's. (env: QS_CTL_RECORD_SID)", valueName: "n"))
    var sid: UInt16 = QSEnv.value("QS_CTL_RECORD_SID", UInt16(65000), flag: "--sid")

    @Option(help: ArgumentHelp("Record the updates after this position: a KT timestamp (default: now; 0 for everything the server still has) or a QS log index (default: 0). (env: QS_CTL_RECORD_FROM)", valueName: "pos|now"))
    var from: OrNone<StartPosition> = QSEnv.value("QS_CTL_RECORD_FROM", .none, flag: "--from")

    @Option(help: ArgumentHelp("Stop after this long, e.g. 10m. (env: QS_CTL_RECORD_DURATION)", valueName: "duration"))
    var duration: OrNone<Interval> = QSEnv.value("QS_CTL_RECORD_DURATION", .none, flag: "--duration")

    @Option(help: ArgumentHelp("Stop once the source reaches this position (a KT timestamp, a QS log index); later updates are not recorded. (env: QS_CTL_RECORD_UNTIL_TS)", valueName: "pos"))
    var untilTs: OrNone<UInt64> = QSEnv.value("QS_CTL_RECORD_UNTIL_TS", .none, flag: "--until-ts")

    @Option(help: ArgumentHelp("Stop after this many updates (KT update messages, QS log entries). (env: QS_CTL_RECORD_COUNT)", valueName: "n"))
    var count: OrNone<Int> = QSEnv.value("QS_CTL_RECORD_COUNT", .none, flag: "--count")

    @Option(help: ArgumentHelp("Reconnect after this long without a frame or heartbeat. (env: QS_CTL_RECORD_SOURCE_TIMEOUT)", valueName: "duration"))
    var sourceTimeout: Interval = QSEnv.value("QS_CTL_RECORD_SOURCE_TIMEOUT", Interval(.seconds(10)), flag: "--source-timeout")

    @Option(help: ArgumentHelp("Largest KT update message accepted; a larger one is a corrupt frame, not recorded. (env: QS_CTL_RECORD_MAX_MESSAGE_BYTES)", valueName: "size"))
    var maxMessageBytes: ByteSize = QSEnv.value("QS_CTL_RECORD_MAX_MESSAGE_BYTES", ByteSize(64 << 20), flag: "--max-message-bytes")

    @Option(help: ArgumentHelp("qs://: file holding the node's replication token (its --replication-token-file). (env: QS_CTL_RECORD_SOURCE_TOKEN_FILE)", valueName: "file"))
    var sourceTokenFile: String = QSEnv.string("QS_CTL_RECORD_SOURCE_TOKEN_FILE") ?? ""

    @Option(help: outputHelp("QS_CTL_RECORD_OUTPUT", "table prints a summary line at the end; json the sidecar's contents."))
    var output: OutputFormat = QSEnv.value("QS_CTL_RECORD_OUTPUT", OutputFormat.table, flag: "--output")

    func validate() throws {
        guard source.value != nil else { throw ValidationError("--source is required: kt://HOST:PORT or qs://HOST:PORT (or set QS_CTL_RECORD_SOURCE)") }
        guard !out.isEmpty else { throw ValidationError("--out FILE is required (or set QS_CTL_RECORD_OUT)") }
        guard sourceTimeout.duration > .zero else { throw ValidationError("--source-timeout must be more than 0, e.g. 10s") }
        guard maxMessageBytes.bytes > 0 else { throw ValidationError("--max-message-bytes must be more than 0, e.g. 64MiB") }
        guard (count.value ?? 1) > 0 else { throw ValidationError("--count must be a positive number") }
    }

    func run() async throws {
        LoggingSystem.bootstrap { TextLogHandler(label: $0) }
        let logger = Logger(label: "qsctl-record")
        guard let spec = source.value else { throw ValidationError("--source is required") }
        let stop = StopConditions(count: count.value, untilPosition: untilTs.value, duration: duration.value?.duration)
        let timeout = sourceTimeout.duration
        let recording: Task<RecordingMeta, any Error>
        switch spec.kind {
        case let .kt(host, port):
            let start: UInt64
            if case let .position(p) = from.value { start = p } else { start = KTClock.pure(nowMillis: UInt64(Date().timeIntervalSince1970 * 1000)) }
            let client = KTReplicationClient(host: host, port: port, sid: sid, timeout: timeout,
                                             maxMessageBytes: maxMessageBytes.bytes)
            let recorder = KTRecorder(client: client, path: out, stop: stop, logger: logger)
            recording = Task { try await recorder.run(from: start) }
        case let .qs(host, port):
            let start: UInt64?
            switch from.value {
            case .now: start = nil
            case let .position(p): start = p
            case nil: start = 0
            }
            var subscription = LogSubscription(host: host, port: port, readTimeout: .nanoseconds(Int64(timeout.seconds * 1e9)))
            subscription.token = try TokenFile.optional(sourceTokenFile, flag: "--source-token-file") ?? []
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
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var result = Output(output, listing: false)
        result.item(json: (try? encoder.encode(meta)).map { String(decoding: $0, as: UTF8.self) } ?? "{}",
                    table: "recorded \(meta.updates) updates in \(meta.frames) frames (\(meta.bytes) bytes) from \(meta.source), \(span); stopped by \(meta.stoppedBy ?? "?"); sidecar \(RecordingMeta.path(for: out))")
        result.finish()
    }
}

/// `qsctl record --source`: a KT replication feed or a QS node's log feed.
struct RecordSource: ExpressibleByArgument, DescribedArgument, Sendable, CustomStringConvertible {
    enum Kind: Sendable {
        case kt(host: String, port: Int)
        case qs(host: String, port: Int)
    }

    let kind: Kind
    let description: String

    init?(argument: String) {
        description = argument
        let scheme = argument.prefix(5)
        guard scheme == "kt://" || scheme == "qs://",
              case let .tcp(host, port) = try? Endpoint(parsing: String(argument.dropFirst(5))), port > 0 else { return nil }
        kind = scheme == "kt://" ? .kt(host: host, port: port) : .qs(host: host, port: port)
    }

    static let expectation = "kt://HOST:PORT or qs://HOST:PORT"
}

/// `qsctl record --from`: a position, or `now`.
enum StartPosition: ExpressibleByArgument, DescribedArgument, Sendable, CustomStringConvertible {
    case now
    case position(UInt64)

    init?(argument: String) {
        if argument == "now" { self = .now } else if let p = UInt64(argument) { self = .position(p) } else { return nil }
    }

    static let expectation = "a position (a KT timestamp, a QS log index) or now"
    var description: String {
        switch self {
        case .now: return "now"
        case let .position(p): return "\(p)"
        }
    }
}
