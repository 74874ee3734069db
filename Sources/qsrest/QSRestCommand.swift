import ArgumentParser
import Foundation
import Logging
import QSDaemon
import QSFeed
import QSNet
import QSRest
import ServiceLifecycle

@main
struct QSRestCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qsrest",
        abstract: "The write service KT's producers move to: KT HTTP RPC and REST writes, per-producer keyspaces and quotas, batched into the QS root.",
        discussion: """
            Producers write with KT's HTTP RPC write procedures (set, add, replace, append, cas, \
            increment, remove, set_bulk, remove_bulk) or RESTful PUT/DELETE, authenticated with \
            HTTP Basic producer:token or a bearer token checked against --acl (TOML; tokens \
            stored as SHA-256). Writes of every producer are gathered into one batch every \
            --batch-interval and applied at the root with compare-and-swap on this instance's \
            --source-id; conditional writes are decided by the root inside that transaction. A \
            request is answered only once its batch is committed. SIGHUP re-reads --acl (a bad \
            file keeps the ACL in force). The admin port serves GET /usage (keys and bytes \
            per producer, as qsctl usage; behind --admin-token-file like its other actions). \
            KT's binary protocol carries no credential and is refused: producers write over \
            HTTP. Every flag has a QS_ environment fallback.
            """ + "\n\n" + DaemonExitCodes.restHelp,
        version: QSVersion.string
    )

    static func main() async { await runCommand() }

    @Option(help: ArgumentHelp("The QS root's write address, or several separated by commas (HOST:PORT,HOST:PORT: a root cluster's members, or a root and the one it is cut over to): one is written to, the next taken when it is unreachable, fails, takes no writes (after a cutover, the promoted root is found) or is stale. (env: QS_ROOT)", valueName: "host:port[,…]"))
    var root: AddressList = QSEnv.value("QS_ROOT", AddressList(.tcp(host: "127.0.0.1", port: 7400)))

    @Option(help: ArgumentHelp("Where producers connect (KT's HTTP port, 1978, if they keep their address). (env: QS_LISTEN)", valueName: "host:port"))
    var listen: Address = QSEnv.value("QS_LISTEN", Address(.tcp(host: "127.0.0.1", port: 1978)))

    @Option(help: ArgumentHelp("The producers' ACL (TOML: [producers.NAME] token_sha256, prefixes, quotas). (env: QS_ACL)", valueName: "file"))
    var acl: String = QSEnv.string("QS_ACL") ?? ""

    @Option(help: ArgumentHelp("KT database index → QS key prefix, as INDEX=PREFIX,…, as for qsktbridge. (env: QS_DB_MAP)", valueName: "map"))
    var dbMap: KTDBMap = QSEnv.value("QS_DB_MAP", KTDBMap.single)

    @Option(help: ArgumentHelp("With several --root addresses: leave the one in use as stale when its head stands still this long while another address's head is past it, e.g. 5s. (env: QS_ROOT_STALE_AFTER)", valueName: "duration"))
    var rootStaleAfter: Interval = QSEnv.value("QS_ROOT_STALE_AFTER", Interval(RootWriter.staleAfter))

    @Option(help: ArgumentHelp("This instance's checkpoint name at the root; every qsrest needs its own. Default: qsrest:HOSTNAME:LISTEN. (env: QS_SOURCE_ID)", valueName: "id"))
    var sourceID: String = QSEnv.string("QS_SOURCE_ID") ?? ""

    @Option(help: ArgumentHelp("File holding the root's write token. (env: QS_WRITE_TOKEN_FILE)", valueName: "file"))
    var writeTokenFile: String = QSEnv.string("QS_WRITE_TOKEN_FILE") ?? ""

    @Option(help: ArgumentHelp("Flush a batch this often, e.g. 500ms. (env: QS_BATCH_INTERVAL)", valueName: "duration"))
    var batchInterval: Interval = QSEnv.value("QS_BATCH_INTERVAL", Interval(.milliseconds(500)))

    @Option(help: ArgumentHelp("Flush sooner once a batch holds this many operations (entries in compatible mode). (env: QS_BATCH_MAX_OPS)", valueName: "n"))
    var batchMaxOps: Int = QSEnv.value("QS_BATCH_MAX_OPS", 10_000)

    @Option(help: ArgumentHelp("Flush sooner once a batch holds this many bytes, e.g. 16MiB. (env: QS_BATCH_MAX_BYTES)", valueName: "size"))
    var batchMaxBytes: ByteSize = QSEnv.value("QS_BATCH_MAX_BYTES", ByteSize(16 << 20))

    @Option(help: ArgumentHelp("The memory of writes waiting for the root (their keys and values, and about 150 bytes each besides) beyond which requests are refused with 503 and Retry-After, e.g. 256MiB; a request is always taken when none wait. (env: QS_MAX_PENDING_BYTES)", valueName: "size"))
    var maxPendingBytes: ByteSize = QSEnv.value("QS_MAX_PENDING_BYTES", ByteSize(256 << 20))

    @Option(help: ArgumentHelp("Largest request body accepted, e.g. 32MiB. (env: QS_MAX_BODY)", valueName: "size"))
    var maxBody: ByteSize = QSEnv.value("QS_MAX_BODY", ByteSize(32 << 20))

    @Option(help: ArgumentHelp("The most bytes of request bodies still arriving (read, not yet parsed and queued), and of what their parses build (estimated from their lines: about 330 bytes a line or field), that all producer connections hold together, e.g. 256MiB: a body that would pass it is answered 503 with Retry-After at once and its connection closed, a request whose parse alone would pass its producer's share 413, counted in qs_rest_arriving_bytes_refusals_total. --max-body bounds one body; this bounds them all. (env: QS_MAX_ARRIVING_BYTES)", valueName: "size"))
    var maxArrivingBytes: ByteSize = QSEnv.value("QS_MAX_ARRIVING_BYTES", ByteSize(256 << 20))

    @Option(name: .customLong("max-arriving-bytes-per-producer"), help: ArgumentHelp("Each producer's share of --max-arriving-bytes: the most bytes of its bodies still arriving that one producer's connections hold together, e.g. 128MiB, so one producer's slow uploads cannot take the whole budget from the others; a body that would pass it is answered 503 with Retry-After at once. At least --max-body, at most --max-arriving-bytes. Default: --max-arriving-bytes less one --max-body (so another producer's body always fits), at least --max-body. (env: QS_MAX_ARRIVING_BYTES_PER_PRODUCER)", valueName: "size"))
    var maxArrivingBytesPerProducerOption: ByteSize?

    /// `--max-arriving-bytes-per-producer`, else its variable; nil: the default share.
    var maxArrivingBytesPerProducer: ByteSize? {
        maxArrivingBytesPerProducerOption ?? QSEnv.optional("QS_MAX_ARRIVING_BYTES_PER_PRODUCER", flag: "--max-arriving-bytes-per-producer")
    }

    @Option(help: ArgumentHelp("The longest a request past its producer's soft quota is delayed; one that would wait longer is refused with 429 and Retry-After. 0 to --commit-timeout. (env: QS_QUOTA_MAX_DELAY)", valueName: "duration"))
    var quotaMaxDelay: Interval = QSEnv.value("QS_QUOTA_MAX_DELAY", Interval(.seconds(2)))

    @Option(help: ArgumentHelp("The node the admin port's GET /usage scans (a replica keeps the scan off the root), HOST:PORT or unix:PATH; none: the --root list, the first that answers. (env: QS_USAGE_NODE)", valueName: "host:port"))
    var usageNode: OrNone<Address> = QSEnv.value("QS_USAGE_NODE", .none)

    @Option(help: ArgumentHelp("File holding a token of --usage-node (a replica's is its --replication-token-file), presented to read it from another machine; default: the write token. (env: QS_USAGE_NODE_TOKEN_FILE)", valueName: "file"))
    var usageNodeTokenFile: String = QSEnv.string("QS_USAGE_NODE_TOKEN_FILE") ?? ""

    @Option(help: ArgumentHelp("GET /usage serves a report this young without scanning again (?fresh=1 scans anyway), e.g. 60s. (env: QS_USAGE_MAX_AGE)", valueName: "duration"))
    var usageMaxAge: Interval = QSEnv.value("QS_USAGE_MAX_AGE", Interval(.seconds(60)))

    @Option(help: ArgumentHelp("How long a write may wait for its commit at the root, counted from its arrival (also behind a batch the root did not answer), before it is answered 503: 'not applied' when no root took its batch, 'outcome unknown' when the batch was sent and not answered; keep it under the producers' own timeouts, e.g. 20s. (env: QS_COMMIT_TIMEOUT)", valueName: "duration"))
    var commitTimeout: Interval = QSEnv.value("QS_COMMIT_TIMEOUT", Interval(.seconds(20)))

    @OptionGroup var service: ServiceOptions

    func validate() throws {
        guard !acl.isEmpty else { throw ValidationError("--acl is required: the producers' TOML file (or set QS_ACL)") }
        guard batchInterval.duration > .zero else { throw ValidationError("--batch-interval must be more than 0, e.g. 500ms") }
        guard commitTimeout.duration > .zero else { throw ValidationError("--commit-timeout must be more than 0, e.g. 20s") }
        // A write waits up to --batch-interval for its batch to start, and its deadline counts
        // from its arrival: a shorter commit timeout would answer writes 503 with the root fine.
        guard commitTimeout.duration > batchInterval.duration * 2 else {
            throw ValidationError("--commit-timeout (\(commitTimeout)) must be more than twice --batch-interval (\(batchInterval)): a write waits up to a batch interval before its batch is sent; e.g. --commit-timeout 20s")
        }
        // A delay is a request held open: past the commit timeout it would be answered 503
        // anyway (and a huge one overflowed the delay's arithmetic).
        guard quotaMaxDelay.duration >= .zero, quotaMaxDelay.duration <= commitTimeout.duration else {
            throw ValidationError("--quota-max-delay \(quotaMaxDelay) (or QS_QUOTA_MAX_DELAY) must be 0 (refuse at once) to --commit-timeout (\(commitTimeout)): a request delayed longer would be answered 503 by its commit timeout; e.g. 2s")
        }
        guard usageMaxAge.duration >= .zero else { throw ValidationError("--usage-max-age must be 0 (always scan) or more, e.g. 60s") }
        guard batchMaxOps > 0 else { throw ValidationError("--batch-max-ops must be positive") }
        try validateRootStaleAfter(rootStaleAfter)
        try validateSourceID(sourceID, flag: "--source-id")
        for (flag, size) in [("--batch-max-bytes", batchMaxBytes), ("--max-pending-bytes", maxPendingBytes), ("--max-body", maxBody), ("--max-arriving-bytes", maxArrivingBytes)] where size.bytes <= 0 {
            throw ValidationError("\(flag) must be more than 0, e.g. 1MiB")
        }
        guard maxArrivingBytes.bytes >= maxBody.bytes else {
            throw ValidationError("--max-arriving-bytes \(maxArrivingBytes) (or QS_MAX_ARRIVING_BYTES) must be at least --max-body \(maxBody): a body as large as --max-body could never arrive")
        }
        if let share = maxArrivingBytesPerProducer {
            guard share.bytes >= maxBody.bytes, share.bytes <= maxArrivingBytes.bytes else {
                throw ValidationError("--max-arriving-bytes-per-producer \(share) (or QS_MAX_ARRIVING_BYTES_PER_PRODUCER) must be at least --max-body \(maxBody) (a body as large as --max-body could never arrive) and at most --max-arriving-bytes \(maxArrivingBytes) (the budget it is a share of)")
            }
        }
    }

    func run() async throws {
        let (logger, registry) = service.bootstrap(label: "qsrest")
        try service.checkListenersAvailable([("rest", [listen.endpoint])])
        let initial: ACL
        do {
            initial = try Access.load(path: acl)
        } catch {
            logger.critical("cannot load the ACL", metadata: ["acl": "\(acl)", "error": "\(error)"])
            throw ExitCode(1)
        }
        let id = sourceID.isEmpty ? "qsrest:\(ProcessInfo.processInfo.hostName):\(listen)" : sourceID
        let token = try TokenFile.optional(writeTokenFile, flag: "--write-token-file") ?? []
        let origin = writeTokenFile.isEmpty ? "an empty write token (no --write-token-file)" : "the token in --write-token-file \(writeTokenFile)"
        let rootMetrics = RootLinkMetrics()
        let roots = root.endpoints
        let writer = RootWriter(endpoints: roots, token: token, logger: logger, metrics: rootMetrics,
                                client: "qsrest source-id=\(id)", tokenOrigin: origin, staleAfter: rootStaleAfter.duration,
                                unretried: [.storageFull, .diskFull], sourceID: id)
        let metrics = RestMetrics()
        let queue = WriteQueue(sourceID: id, root: writer,
                               limits: .init(interval: batchInterval.duration, maxWrites: batchMaxOps, maxBytes: batchMaxBytes.bytes,
                                             maxPendingBytes: maxPendingBytes.bytes, commitTimeout: commitTimeout.duration,
                                             stopWithin: WriteQueue.Limits.stopWithin(shutdownTimeout: service.shutdownTimeout.duration)),
                               metrics: metrics, logger: logger)
        let access = Access(initial, maxQuotaDelay: quotaMaxDelay.duration, metrics: metrics)
        let server = RestServer(endpoints: [listen.endpoint], access: access, queue: queue,
                                writes: KTWrites(databases: dbMap.prefixes), metrics: metrics, logger: logger,
                                configuration: .init(maxBodyBytes: maxBody.bytes, maxQuotaDelay: quotaMaxDelay.duration,
                                                     maxArrivingBytes: maxArrivingBytes.bytes,
                                                     maxArrivingBytesPerProducer: maxArrivingBytesPerProducer?.bytes),
                                limits: service.connectionLimits)
        logger.info("qsrest starting", metadata: ["roots": "\(root)", "source-id": "\(id)", "producers": "\(initial.producers.map(\.name))"])
        // The queue is listed first so it stops last: the server drains (its requests wait
        // for their batches) before the queue's final flush.
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: queue, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup),
            .init(service: server, failureTerminationBehavior: .gracefullyShutdownGroup),
        ]
        if let adminEndpoint = service.adminEndpoint() {
            let readToken = try TokenFile.optional(usageNodeTokenFile, flag: "--usage-node-token-file") ?? token
            let usage = UsageReporter(nodes: usageNode.value.map { [$0.endpoint] } ?? roots, token: readToken, maxAge: usageMaxAge.duration)
            let reports: [String: AdminReport] = ["/usage": { query in await usage.answer(query: query, acl: access.acl) }]
            services.append(.init(service: AdminServer(endpoint: adminEndpoint, registry: registry, logger: logger, limits: service.connectionLimits,
                                                       reports: reports, actionGate: try service.adminGate(logger: logger),
                                                       beforeScrape: {
                // As a bridge's: 0 also while a call has waited past the root's patience (a
                // root hung with batches in flight keeps its connection).
                let link = writer.link.withLockedValue { $0 }
                rootMetrics.rootConnected.record(link.connected && link.stall() == nil ? 1 : 0)
            }, readiness: {
                if let halted = queue.halted.withLockedValue({ $0 }) { return Readiness(ready: false, detail: halted) }
                // Found by the idle check; the next write halts qsrest on it.
                if let lost = writer.link.withLockedValue({ $0.positionLost }) {
                    return Readiness(ready: false, detail: lost + "; qsrest's next write halts it: re-send what the producers wrote since, or restore the root, then restart qsrest")
                }
                // The present state first: a root gone since the last batch failed reads as
                // not connected, with that failure after it.
                let link = writer.link.withLockedValue { $0 }
                // A failed batch keeps /readyz 503 until a batch commits or, where the failure
                // was the connection's (a hang, a restart), the root answers again: behind a
                // readiness-gated balancer no write would come to clear it.
                let lastBatch = queue.lastFailure.withLockedValue({ $0 }).flatMap { failure -> String? in
                    if link.lastCallFailure == nil, let answered = link.lastAnswerAt, answered > failure.at { return nil }
                    // Nor one the node refused (out of room) before a connection made since:
                    // the root restarted (fixed, most likely) or another took over; the next
                    // write tells again.
                    if link.connected, let since = link.connectedAt, since > failure.at { return nil }
                    return "the last batch failed, its writes were answered 503 and none since committed: \(failure.why)"
                }
                guard link.connected else {
                    let notConnected = "not connected to a writable root (\(roots.map(\.description).joined(separator: ",")))\(link.lastError.map { ": \($0)" } ?? "")"
                    return Readiness(ready: false, detail: [notConnected, lastBatch].compactMap { $0 }.joined(separator: "; "))
                }
                if let lastBatch { return Readiness(ready: false, detail: lastBatch) }
                if let stall = link.stall() {
                    return Readiness(ready: false, detail: "the root at \(link.root) does not answer: \(stall)")
                }
                if let stalled = queue.stalled(lastFailure: link.lastCallFailure) {
                    return Readiness(ready: false, detail: stalled)
                }
                guard let p = queue.position.withLockedValue({ $0 }) else { return Readiness(ready: false, detail: "no answer from the root yet") }
                return Readiness(ready: true, detail: "writing to the root; position \(p)")
            })))
        }
        let path = acl
        let keepalive = Task {
            while !Task.isCancelled {
                await writer.keepalive()
                try? await Task.sleep(for: .seconds(1))
            }
        }
        defer { keepalive.cancel() }
        // The queue's stop clock is told of the shutdown before any other service (the
        // admin server and the REST server drain first): what waits on the root is answered
        // within --shutdown-timeout while its connection is still served, not cut off.
        try await service.serviceGroup(services, logger: logger, toldFirst: [queue.stopClock]) {
            switch access.reload(path: path) {
            case let .success(acl):
                logger.notice("ACL reloaded", metadata: ["acl": "\(path)", "producers": "\(acl.producers.map(\.name))"])
            case let .failure(error):
                logger.error("ACL reload refused; the ACL in force stays", metadata: ["acl": "\(path)", "error": "\(error)"])
            }
        }.run()
        let unanswered = await queue.answeredAtStop
        if unanswered > 0 {
            logger.error("stopped before the root answered some writes: they were answered 503 (not acknowledged) and their producers send them again",
                         metadata: ["requests": "\(unanswered)", "shutdown-timeout": "\(service.shutdownTimeout)"])
            throw ExitCode(75)
        }
    }
}
