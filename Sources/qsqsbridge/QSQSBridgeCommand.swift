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
            """
    )

    @Option(help: ArgumentHelp("The source: a node, qs://HOST:PORT, or a recording of one, capture:FILE (qsctl record --source qs://…). (env: QS_SOURCE)", valueName: "source"))
    var source: String = QSEnv.string("QS_SOURCE") ?? ""

    @Option(help: ArgumentHelp("compatible (entry for entry, same indexes and hashes) or batched. (env: QS_MODE)", valueName: "mode"))
    var mode: String = QSEnv.string("QS_MODE") ?? "compatible"

    @OptionGroup var bridge: BridgeOptions
    @OptionGroup var service: ServiceOptions

    func validate() throws {
        if !source.hasPrefix("capture:") { _ = try sourceEndpoint() }
        guard WriteMode(rawValue: mode) != nil else { throw ValidationError("--mode '\(mode)' must be compatible or batched") }
    }

    func sourceEndpoint() throws -> Endpoint {
        guard source.hasPrefix("qs://"), let e = try? Endpoint(parsing: String(source.dropFirst(5))) else {
            throw ValidationError("--source '\(source)' is not qs://HOST:PORT or capture:FILE (or set QS_SOURCE)")
        }
        return e
    }

    func run() async throws {
        let (logger, registry) = service.bootstrap(label: "qsqsbridge")
        let writeMode = WriteMode(rawValue: mode)!
        let metrics = FeedMetrics()
        let writer = RootWriter(endpoint: try bridge.rootEndpoint(), token: try bridge.token(), logger: logger, metrics: metrics)
        if source.hasPrefix("capture:") {
            let path = String(source.dropFirst(8))
            let id = bridge.sourceID.isEmpty ? "capture:" + URL(fileURLWithPath: path).standardizedFileURL.path : bridge.sourceID
            logger.info("bridge starting", metadata: ["source": "\(source)", "mode": "\(mode)", "source-id": "\(id)", "root": "\(bridge.root)"])
            let consumer = FeedConsumer(source: QSCaptureSource(path: path), sourceID: id, root: writer,
                                        limits: bridge.limits(mode: writeMode), metrics: metrics, logger: logger)
            try await runBridge(consumer: consumer, service: service, registry: registry, logger: logger)
            return
        }
        let endpoint = try sourceEndpoint()
        let id = bridge.sourceID.isEmpty ? "qs:\(endpoint)" : bridge.sourceID
        logger.info("bridge starting", metadata: ["source": "\(source)", "mode": "\(mode)", "source-id": "\(id)", "root": "\(bridge.root)"])
        let consumer = FeedConsumer(source: QSLogSource(endpoint: endpoint, stopAtHead: bridge.once), sourceID: id, root: writer,
                                    limits: bridge.limits(mode: writeMode), metrics: metrics, logger: logger)
        try await runBridge(consumer: consumer, service: service, registry: registry, logger: logger)
    }
}
