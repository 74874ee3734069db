import ArgumentParser
import Foundation
import Logging
import QSFeed
import QSDaemon
import QSNet

@main
struct QSQSBridgeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qsqsbridge",
        abstract: "Tail a QS node's transaction log and write it into another QS root.",
        discussion: """
            --mode compatible appends every source log entry to the target at the same index \
            with the same bytes and chained hash, so replicas can move between the two roots \
            (and back) without a bootstrap; the target then takes no other writes. \
            --mode batched applies the source's changes in batches with compare-and-swap on \
            the source log index, like qsktbridge. Every flag has a QS_ environment fallback.
            """ + "\n\n" + DaemonExitCodes.bridgeHelp,
        version: QSVersion.string
    )

    static func main() async { await runCommand() }

    @Option(help: ArgumentHelp("The source: a node, qs://HOST:PORT, or a recording of one, capture:FILE (qsctl record --source qs://…). (env: QS_SOURCE)", valueName: "source"))
    var source: Required<QSSource> = QSEnv.value("QS_SOURCE", .missing)

    @Option(help: ArgumentHelp("compatible (entry for entry, same indexes and hashes) or batched. (env: QS_MODE)", valueName: "mode"))
    var mode: WriteMode = QSEnv.value("QS_MODE", .compatible)

    @Option(help: ArgumentHelp("File holding the source node's replication token (its --replication-token-file): to subscribe to its log, and to read it from another machine. (env: QS_SOURCE_TOKEN_FILE)", valueName: "file"))
    var sourceTokenFile: String = QSEnv.string("QS_SOURCE_TOKEN_FILE") ?? ""

    @Flag(inversion: .prefixedNo, help: "Batched: start under a source id the root has no checkpoint for although it holds other QS sources' checkpoints (this node really is another source for the root). Without it such a first start from a node stops before writing anything: the usual cause is the same source already mirrored under another id (another spelling of its address, another member of its cluster, a replica of it), whose whole log would be replayed over newer values; a capture only warns. (env: QS_ALLOW_NEW_SOURCE_ID)")
    var allowNewSourceId: Bool = QSEnv.flag("QS_ALLOW_NEW_SOURCE_ID")

    @OptionGroup var bridge: BridgeOptions
    @OptionGroup var service: ServiceOptions

    func validate() throws {
        guard let spec = source.value else { throw ValidationError("--source is required: qs://HOST:PORT or capture:FILE (or set QS_SOURCE)") }
        if case let .node(node) = spec.kind, bridge.root.endpoints.contains(node) {
            throw ValidationError("--source \(spec) is also in --root \(bridge.root): a mirror reads one node and writes another")
        }
    }

    func run() async throws {
        let (logger, registry) = service.bootstrap(label: "qsqsbridge")
        try service.checkListenersAvailable()
        guard let spec = source.value else { throw ValidationError("--source is required") }
        let metrics = FeedMetrics()
        let id = bridge.sourceID.isEmpty ? spec.defaultSourceID : bridge.sourceID
        let writer = try bridge.rootWriter(client: "qsqsbridge mode=\(mode) source=\(spec) source-id=\(id)",
                                           sourceID: mode == .compatible ? nil : id, logger: logger, metrics: metrics)
        logger.info("bridge starting", metadata: ["source": "\(spec)", "mode": "\(mode)", "source-id": "\(id)", "root": "\(bridge.root)"])
        switch spec.kind {
        case let .capture(path):
            let consumer = FeedConsumer(source: QSCaptureSource(path: path, decodeOperations: mode == .batched), sourceID: id, root: writer,
                                        limits: bridge.limits(mode: mode), metrics: metrics, logger: logger)
            try await runBridge(consumer: consumer, service: service, registry: registry, logger: logger)
        case let .node(endpoint):
            // Batched, the checkpoint is a position in the source's log under this id: an id
            // new to a root that holds other QS sources' (the source moved, or is another
            // member of its cluster or a replica of it) replays the whole log.
            // It stops there, unless told this node is another source; a capture's
            // checkpoint (a recording, whose replay this node's whole log goes over again)
            // is said, not stopped at.
            let firstStart = mode == .batched
                ? checkOtherSources(sourceID: id, kind: "QS sources'", replays: "the source's whole log",
                                    refuse: allowNewSourceId ? nil : "--allow-new-source-id") { other, _ -> OtherSource? in
                    if other.hasPrefix("qs:") && other != "qs:expiry" /* a root's own purge */ { return .stops }
                    return other.hasPrefix("capture:") ? .warns : nil
                }
                : nil
            let consumer = FeedConsumer(source: QSLogSource(endpoint: endpoint, stopAtHead: bridge.once,
                                                                  token: try TokenFile.optional(sourceTokenFile, flag: "--source-token-file") ?? [],
                                                                  decodeOperations: mode == .batched), sourceID: id, root: writer,
                                        limits: bridge.limits(mode: mode), metrics: metrics, logger: logger, onFirstStart: firstStart)
            try await runBridge(consumer: consumer, service: service, registry: registry, logger: logger)
        }
    }
}

/// `--source`: a QS node's log feed or a recording of one.
struct QSSource: ExpressibleByArgument, DescribedArgument, CustomStringConvertible {
    enum Kind {
        case node(Endpoint)
        case capture(String)
    }

    let kind: Kind
    let description: String

    init?(argument: String) {
        description = argument
        if argument.hasPrefix("capture:"), argument.count > 8 {
            kind = .capture(String(argument.dropFirst(8)))
        } else if argument.hasPrefix("qs://"), let e = try? Endpoint(parsing: String(argument.dropFirst(5))) {
            kind = .node(e)
        } else {
            return nil
        }
    }

    static let expectation = "qs://HOST:PORT or capture:FILE"

    static func refusal(of argument: String) -> String? {
        if argument.hasPrefix("qs://") {
            let address = String(argument.dropFirst(5))
            if address.contains(":"), let why = endpointRefusal(address) { return "qs://\(address): \(why)" }
            return (try? Endpoint(parsing: address)) == nil ? "qs:// takes the source node's HOST:PORT, as in qs://10.0.0.1:7400" : nil
        }
        if argument == "capture:" { return "capture: needs a path after the colon" }
        if argument.hasPrefix("kt://") { return "a KT source is qsktbridge's; qsqsbridge reads a QS node (qs://HOST:PORT)" }
        return "'\(argument)' names no source kind: start it with qs:// or capture:"
    }

    /// The checkpoint name when --source-id is not given.
    var defaultSourceID: String {
        switch kind {
        case let .node(e): return "qs:\(e)"
        case let .capture(path): return "capture:" + URL(fileURLWithPath: path).standardizedFileURL.path
        }
    }
}
