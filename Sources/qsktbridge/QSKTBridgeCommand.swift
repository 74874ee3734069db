import ArgumentParser
import Foundation
import Logging
import QSFeed
import QSModel
import QSKTFeed
import QSDaemon
import QSNet
import ServiceLifecycle

@main
struct QSKTBridgeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qsktbridge",
        abstract: "Tail a Kyoto Tycoon update feed and write every change into a QS root.",
        discussion: """
            SOURCE is kt://HOST:PORT (live replication), ulog:DIR (a KT update-log directory, \
            followed as it grows; with --once, read to its end) or capture:FILE (a recorded \
            replication stream). Changes are batched every --batch-interval and written with \
            compare-and-swap on the source timestamp, so any number of bridges with the same \
            --source-id is harmless. The bridge resumes from the root's checkpoint. On a first \
            start against kt:// (--initial-copy auto) it first copies every record of the mapped \
            databases through KT's HTTP RPC cursors, resumably, then follows the update log from \
            the KT time noted before the copy, so a KT whose old update logs were removed is \
            migrated complete. Every flag has a QS_ environment fallback, as shown.
            """ + "\n\n" + DaemonExitCodes.bridgeHelp,
        version: QSVersion.string
    )

    static func main() async { await runCommand() }

    @Option(help: ArgumentHelp("kt://HOST:PORT, ulog:DIR or capture:FILE. (env: QS_SOURCE)", valueName: "source"))
    var source: Required<KTSource> = QSEnv.value("QS_SOURCE", .missing)

    @Option(help: ArgumentHelp("Server id the bridge presents to KT; must differ from the KT server's -sid and every writer's. (env: QS_SID)", valueName: "n"))
    var sid: UInt16 = QSEnv.value("QS_SID", 65000)

    @Option(help: ArgumentHelp("KT database index → QS key prefix, as INDEX=PREFIX,…; default: database 0 only, unprefixed. (env: QS_DB_MAP)", valueName: "map"))
    var dbMap: KTDBMap = QSEnv.value("QS_DB_MAP", KTDBMap.single)

    @Flag(inversion: .prefixedNo, help: "The --db-map differs on purpose from the one the root recorded for this source id: record this one (for one start; the keys written under the old prefixes stay as they are). Without it a bridge whose --db-map differs stops before writing anything: a typo would put KT's records under other prefixes than their keys already at the root. (env: QS_DB_MAP_CHANGED)")
    var dbMapChanged: Bool = QSEnv.flag("QS_DB_MAP_CHANGED")

    @Option(help: ArgumentHelp("An update for a database --db-map does not map: stop the bridge, or count, log and skip it. (env: QS_ON_UNMAPPED)", valueName: "stop|count"))
    var onUnmapped: KTPolicy = QSEnv.value("QS_ON_UNMAPPED", .stop)

    @Option(help: ArgumentHelp("An update that cannot be decoded: stop the bridge, or count, log and skip it. (env: QS_ON_UNDECODABLE)", valueName: "stop|count"))
    var onUndecodable: KTPolicy = QSEnv.value("QS_ON_UNDECODABLE", .stop)

    @Flag(inversion: .prefixedNo, help: "Apply KT clears (they delete every key under the database's prefix); without it a clear stops the bridge. (env: QS_ALLOW_CLEAR)")
    var allowClear: Bool = QSEnv.flag("QS_ALLOW_CLEAR")
    @Flag(inversion: .prefixedNo, help: "Start under a source id the root has no checkpoint for although it holds other KT sources' or qsrest's checkpoints (this KT really is another source for the root). Without it such a first start of a live KT (kt://) stops before writing anything: the usual cause is a KT already migrated under another id (another spelling of its address, a --source-id typo), whose copy or replay would put its older values back over newer ones; a ulog directory or a capture only warns. (env: QS_ALLOW_NEW_SOURCE_ID)")
    var allowNewSourceId: Bool = QSEnv.flag("QS_ALLOW_NEW_SOURCE_ID")

    @Option(help: ArgumentHelp("Re-make the KT connection after this long without a frame or heartbeat while the bridge is reading (time spent waiting on the root does not count). (env: QS_SOURCE_TIMEOUT)", valueName: "duration"))
    var sourceTimeout: Interval = QSEnv.value("QS_SOURCE_TIMEOUT", Interval(.seconds(10)))

    @Option(help: ArgumentHelp("Largest KT update message accepted; a larger one is treated as a corrupt frame. (env: QS_MAX_MESSAGE_BYTES)", valueName: "size"))
    var maxMessageBytes: ByteSize = QSEnv.value("QS_MAX_MESSAGE_BYTES", ByteSize(64 << 20))

    @Option(help: ArgumentHelp("Copy KT's records before following its update log (kt:// sources): auto when the root has no checkpoint for the source id or holds an unfinished copy, always (also over an existing checkpoint, to repair a root), never (replay the update log only). (env: QS_INITIAL_COPY)", valueName: "auto|always|never"))
    var initialCopy: InitialCopyMode = QSEnv.value("QS_INITIAL_COPY", .auto)

    @Option(help: ArgumentHelp("Most the initial copy reads from KT: records and/or bytes per second, e.g. 5000/s, 8MiB/s or 5000/s,8MiB/s; none for no limit. (env: QS_COPY_RATE)", valueName: "rate"))
    var copyRate: CopyRateOption = QSEnv.value("QS_COPY_RATE", CopyRateOption.none)

    @Option(help: ArgumentHelp("Records the initial copy asks KT for per round trip (pipelined cursor reads), 1 to 10000. (env: QS_COPY_PAGE)", valueName: "n"))
    var copyPage: Int = QSEnv.value("QS_COPY_PAGE", 1000)

    @OptionGroup var bridge: BridgeOptions
    @OptionGroup var service: ServiceOptions

    func validate() throws {
        guard source.value != nil else { throw ValidationError("--source is required: kt://HOST:PORT, ulog:DIR or capture:FILE (or set QS_SOURCE)") }
        guard sourceTimeout.duration > .zero else { throw ValidationError("--source-timeout must be more than 0, e.g. 10s") }
        guard maxMessageBytes.bytes > 0 else { throw ValidationError("--max-message-bytes must be more than 0, e.g. 64MiB") }
        if let conflict = KTMapping(prefixes: dbMap.prefixes, allowClear: allowClear).clearConflict() { throw ValidationError(conflict) }
        if let why = SourceDescriptor.problem(dbMap.descriptor(changed: false).text) {
            throw ValidationError("--db-map (or QS_DB_MAP) is too long to be recorded at the root (\(why)): give shorter prefixes")
        }
        guard (1...10_000).contains(copyPage) else { throw ValidationError("--copy-page must be 1 to 10000, e.g. 1000") }
        // A file source that is not there fails now, not after the root is asked and the
        // KT-sources check has spoken of replaying a whole log.
        var isDirectory: ObjCBool = false
        switch source.value?.kind {
        case let .ulog(dir)?:
            guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDirectory), isDirectory.boolValue else {
                throw ValidationError("--source ulog:\(dir): no such directory: give KT's update-log directory (its -ulog)")
            }
        case let .capture(file)?:
            guard FileManager.default.fileExists(atPath: file, isDirectory: &isDirectory), !isDirectory.boolValue else {
                throw ValidationError("--source capture:\(file): no such file: give a recording made by qsctl record")
            }
        default:
            break
        }
        if initialCopy == .always {
            guard let spec = source.value, case .kt = spec.kind else {
                throw ValidationError("--initial-copy always needs a kt://HOST:PORT source: the copy reads KT through its HTTP RPC")
            }
        }
    }

    func run() async throws {
        let (logger, registry) = service.bootstrap(label: "qsktbridge")
        try service.checkListenersAvailable()
        guard let spec = source.value else { throw ValidationError("--source is required") }
        let id = bridge.sourceID.isEmpty ? await spec.resolvedSourceID(logger: logger) : bridge.sourceID
        // A live KT's first start stops there (its copy writes KT's records over the root's);
        // a ulog directory or a capture (replays, most often into a fresh root in CI, several
        // into one in tests) warns, as before.
        let firstStart = otherKTSourcesCheck(sourceID: id, allowed: allowNewSourceId || !spec.isLive)
        let mapping = KTMapping(prefixes: dbMap.prefixes, onUnmapped: onUnmapped, onUndecodable: onUndecodable, allowClear: allowClear)
        let translator = KTTranslator(mapping: mapping, logger: logger)
        let metrics = FeedMetrics()
        let writer = try bridge.rootWriter(client: "qsktbridge source=\(spec) source-id=\(id)", sourceID: id, logger: logger, metrics: metrics)
        await writer.record(dbMap.descriptor(changed: dbMapChanged))
        let limits = bridge.limits(mode: .batched)
        let maxMessage = maxMessageBytes.bytes
        logger.info("bridge starting", metadata: ["source": "\(spec)", "source-id": "\(id)", "root": "\(bridge.root)",
                                                  "sid": "\(sid)", "db-map": "\(dbMap)"])
        switch spec.kind {
        case let .kt(host, port):
            let src = KTReplicationSource(host: host, port: port, sid: sid, translator: translator,
                                          timeout: sourceTimeout.duration, maxMessageBytes: maxMessage)
            // Made for `never` too: it refuses a root that holds an unfinished copy.
            let copy = KTInitialCopy(
                client: KTRPCClient(host: host, port: port, timeout: sourceTimeout.duration),
                mapping: mapping, mode: initialCopy, pageSize: copyPage, rate: copyRate.rate,
                maxBatchOps: bridge.batchMaxOps, maxBatchBytes: bridge.batchMaxBytes.bytes, logger: logger,
                probeFeed: { try await src.probe() })
            // The check of other KT sources runs before the copy: a copy writes KT's records
            // over the root's as a replay from 0 does.
            try await serve(FeedConsumer(source: src, sourceID: id, root: writer, limits: limits, metrics: metrics, logger: logger,
                                         onFirstStart: firstStart, preparation: copy), registry, logger)
        case let .ulog(dir):
            let src = KTULogSource(directory: dir, translator: translator, once: bridge.once, maxMessageBytes: maxMessage)
            try await serve(FeedConsumer(source: src, sourceID: id, root: writer, limits: limits, metrics: metrics, logger: logger, onFirstStart: firstStart), registry, logger)
        case let .capture(file):
            let src = KTCaptureSource(path: file, translator: translator, maxMessageBytes: maxMessage)
            try await serve(FeedConsumer(source: src, sourceID: id, root: writer, limits: limits, metrics: metrics, logger: logger, onFirstStart: firstStart), registry, logger)
        }
    }

    func serve<S: FeedSource>(_ consumer: FeedConsumer<S>, _ registry: PrometheusRegistryBox.Registry, _ logger: Logger) async throws {
        try await runBridge(consumer: consumer, service: service, registry: registry, logger: logger)
    }
}

/// `--source`: where the KT feed comes from.
struct KTSource: ExpressibleByArgument, DescribedArgument, CustomStringConvertible {
    enum Kind {
        case kt(host: String, port: Int)
        case ulog(String)
        case capture(String)
    }

    let kind: Kind
    let description: String

    init?(argument: String) {
        description = argument
        if argument.hasPrefix("kt://") {
            guard case let .tcp(host, port) = try? Endpoint(parsing: String(argument.dropFirst(5))), port > 0 else { return nil }
            kind = .kt(host: host, port: port)
        } else if argument.hasPrefix("ulog:"), argument.count > 5 {
            kind = .ulog(String(argument.dropFirst(5)))
        } else if argument.hasPrefix("capture:"), argument.count > 8 {
            kind = .capture(String(argument.dropFirst(8)))
        } else {
            return nil
        }
    }

    static let expectation = "kt://HOST:PORT, ulog:DIR or capture:FILE"

    static func refusal(of argument: String) -> String? {
        if argument.hasPrefix("kt://") {
            let address = String(argument.dropFirst(5))
            if address.hasPrefix("unix:") { return "KT's replication is TCP only: give kt://HOST:PORT, as in kt://10.0.0.1:1978" }
            if address.contains(":"), let why = endpointRefusal(address) { return "kt://\(address): \(why)" }
            return "kt:// takes the KT server's HOST:PORT with a port from 1 to 65535, as in kt://10.0.0.1:1978"
        }
        if argument == "ulog:" || argument == "capture:" { return "\(argument) needs a path after the colon" }
        return "'\(argument)' names no source kind: start it with kt://, ulog: or capture:"
    }

    /// A live KT server (`kt://`), not a ulog directory or a capture.
    var isLive: Bool {
        if case .kt = kind { return true }
        return false
    }

    /// The checkpoint name when --source-id is not given.
    var defaultSourceID: String {
        switch kind {
        case let .kt(host, port): return "kt:\(host):\(port)"
        case let .ulog(dir): return "ulog:" + URL(fileURLWithPath: dir).standardizedFileURL.path
        case let .capture(file): return "capture:" + URL(fileURLWithPath: file).standardizedFileURL.path
        }
    }
}

