import ArgumentParser
import Foundation
import Logging
import QSFeed
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
            --source-id is harmless. The bridge resumes from the root's checkpoint. Every flag \
            has a QS_ environment fallback, as shown.
            """
    )

    @Option(help: ArgumentHelp("kt://HOST:PORT, ulog:DIR or capture:FILE. (env: QS_SOURCE)", valueName: "source"))
    var source: String = QSEnv.string("QS_SOURCE") ?? ""

    @Option(help: ArgumentHelp("Server id the bridge presents to KT; must differ from the KT server's -sid and every writer's. (env: QS_SID)", valueName: "n"))
    var sid: UInt16 = UInt16(QSEnv.string("QS_SID") ?? "") ?? 65000

    @Option(help: ArgumentHelp("KT database index → QS key prefix, as INDEX=PREFIX,…; default: database 0 only, unprefixed. (env: QS_DB_MAP)", valueName: "map"))
    var dbMap: String = QSEnv.string("QS_DB_MAP") ?? "0="

    @Option(help: ArgumentHelp("An update for a database --db-map does not map: stop the bridge, or count, log and skip it. (env: QS_ON_UNMAPPED)", valueName: "stop|count"))
    var onUnmapped: String = QSEnv.string("QS_ON_UNMAPPED") ?? "stop"

    @Option(help: ArgumentHelp("An update that cannot be decoded: stop the bridge, or count, log and skip it. (env: QS_ON_UNDECODABLE)", valueName: "stop|count"))
    var onUndecodable: String = QSEnv.string("QS_ON_UNDECODABLE") ?? "stop"

    @Flag(inversion: .prefixedNo, help: "Apply KT clears (they delete every key under the database's prefix); without it a clear stops the bridge. (env: QS_ALLOW_CLEAR)")
    var allowClear: Bool = QSEnv.flag("QS_ALLOW_CLEAR")

    @Option(help: ArgumentHelp("Re-make the KT connection after this long without a frame or heartbeat. (env: QS_SOURCE_TIMEOUT)", valueName: "duration"))
    var sourceTimeout: String = QSEnv.string("QS_SOURCE_TIMEOUT") ?? "10s"

    @Option(help: ArgumentHelp("Largest KT update message accepted; a larger one is treated as a corrupt frame. (env: QS_MAX_MESSAGE_BYTES)", valueName: "size"))
    var maxMessageBytes: String = QSEnv.string("QS_MAX_MESSAGE_BYTES") ?? "64MiB"

    @OptionGroup var bridge: BridgeOptions
    @OptionGroup var service: ServiceOptions

    func validate() throws {
        guard !source.isEmpty else { throw ValidationError("--source is required: kt://HOST:PORT, ulog:DIR or capture:FILE (or set QS_SOURCE)") }
        _ = try parsedSource()
        guard parseDuration(sourceTimeout) != nil else { throw ValidationError("--source-timeout '\(sourceTimeout)' is not a duration such as 10s") }
        guard parseByteSize(maxMessageBytes) ?? 0 > 0 else { throw ValidationError("--max-message-bytes '\(maxMessageBytes)' is not a size such as 64MiB") }
        for (flag, value) in [("--on-unmapped", onUnmapped), ("--on-undecodable", onUndecodable)] where KTPolicy(rawValue: value) == nil {
            throw ValidationError("\(flag) '\(value)' must be stop or count")
        }
        do {
            let m = KTMapping(prefixes: try KTMapping.parseDBMap(dbMap), allowClear: allowClear)
            if let conflict = m.clearConflict() { throw ValidationError(conflict) }
        } catch let e as ValidationError {
            throw e
        } catch {
            throw ValidationError("\(error)")
        }
    }

    enum SourceSpec {
        case kt(host: String, port: Int)
        case ulog(String)
        case capture(String)
    }

    func parsedSource() throws -> SourceSpec {
        if source.hasPrefix("kt://") {
            guard case let .tcp(host, port) = try? Endpoint(parsing: String(source.dropFirst(5))), port > 0 else {
                throw ValidationError("--source '\(source)': expected kt://HOST:PORT")
            }
            return .kt(host: host, port: port)
        }
        if source.hasPrefix("ulog:") && source.count > 5 { return .ulog(String(source.dropFirst(5))) }
        if source.hasPrefix("capture:") && source.count > 8 { return .capture(String(source.dropFirst(8))) }
        throw ValidationError("--source '\(source)' is not kt://HOST:PORT, ulog:DIR or capture:FILE")
    }

    func defaultSourceID(_ spec: SourceSpec) -> String {
        switch spec {
        case let .kt(host, port): return "kt:\(host):\(port)"
        case let .ulog(dir): return "ulog:" + URL(fileURLWithPath: dir).standardizedFileURL.path
        case let .capture(file): return "capture:" + URL(fileURLWithPath: file).standardizedFileURL.path
        }
    }

    func run() async throws {
        let (logger, registry) = service.bootstrap(label: "qsktbridge")
        let spec = try parsedSource()
        let id = bridge.sourceID.isEmpty ? defaultSourceID(spec) : bridge.sourceID
        let token = try bridge.token()
        let mapping = KTMapping(prefixes: try KTMapping.parseDBMap(dbMap), onUnmapped: KTPolicy(rawValue: onUnmapped)!,
                                onUndecodable: KTPolicy(rawValue: onUndecodable)!, allowClear: allowClear)
        let translator = KTTranslator(mapping: mapping, logger: logger)
        let metrics = FeedMetrics()
        let writer = RootWriter(endpoint: try bridge.rootEndpoint(), token: token, logger: logger, metrics: metrics)
        let limits = bridge.limits(mode: .batched)
        let maxMessage = parseByteSize(maxMessageBytes)!
        logger.info("bridge starting", metadata: ["source": "\(source)", "source-id": "\(id)", "root": "\(bridge.root)",
                                                  "sid": "\(sid)", "db-map": "\(dbMap)"])
        switch spec {
        case let .kt(host, port):
            let src = KTReplicationSource(host: host, port: port, sid: sid, translator: translator,
                                          timeout: parseDuration(sourceTimeout)!, maxMessageBytes: maxMessage)
            try await serve(FeedConsumer(source: src, sourceID: id, root: writer, limits: limits, metrics: metrics, logger: logger), registry, logger)
        case let .ulog(dir):
            let src = KTULogSource(directory: dir, translator: translator, once: bridge.once)
            try await serve(FeedConsumer(source: src, sourceID: id, root: writer, limits: limits, metrics: metrics, logger: logger), registry, logger)
        case let .capture(file):
            let src = KTCaptureSource(path: file, translator: translator, maxMessageBytes: maxMessage)
            try await serve(FeedConsumer(source: src, sourceID: id, root: writer, limits: limits, metrics: metrics, logger: logger), registry, logger)
        }
    }

    func serve<S: FeedSource>(_ consumer: FeedConsumer<S>, _ registry: PrometheusRegistryBox.Registry, _ logger: Logger) async throws {
        try await runBridge(consumer: consumer, service: service, registry: registry, logger: logger)
    }
}
