import CLinux
import ArgumentParser
import Foundation
import Logging
import Metrics
import Prometheus
import QSNet
import ServiceLifecycle

public enum LogFormat: String, ExpressibleByArgument, CaseIterable, Sendable {
    case json, text
}

/// Options every daemon shares: logging, the admin HTTP port, readiness and shutdown.
public struct ServiceOptions: ParsableArguments, Sendable {
    @Option(help: ArgumentHelp("Log format on stderr: json or text. (env: QS_LOG_FORMAT)", valueName: "format"))
    public var logFormat: LogFormat = QSEnv.value("QS_LOG_FORMAT", .json)

    @Option(help: ArgumentHelp("Lowest level logged: trace, debug, info, notice, warning, error, critical. (env: QS_LOG_LEVEL)", valueName: "level"))
    public var logLevel: LogLevel = QSEnv.value("QS_LOG_LEVEL", .info)

    @Option(help: ArgumentHelp("Admin HTTP address serving /healthz, /readyz and /metrics, as HOST:PORT; none when unset. (env: QS_ADMIN)", valueName: "host:port"))
    public var admin: OrNone<Address> = QSEnv.value("QS_ADMIN", .none)

    @Option(help: ArgumentHelp("File holding the admin token: the admin port's actions (POST /upstream) require it as 'Authorization: Bearer TOKEN', and a root's promote and demote (qsctl --admin-token-file) carry it; without it --admin must be loopback and a root takes role changes from this machine only. (env: QS_ADMIN_TOKEN_FILE)", valueName: "file"))
    public var adminTokenFile: String = QSEnv.string("QS_ADMIN_TOKEN_FILE") ?? ""

    @Option(help: ArgumentHelp("/readyz answers 503 while the daemon is further behind its source or upstream than this, e.g. 5s. (env: QS_READY_LAG)", valueName: "duration"))
    public var readyLag: Interval = QSEnv.value("QS_READY_LAG", Interval(.seconds(5)))

    @Option(help: ArgumentHelp("On SIGTERM/SIGINT, how long to finish in-flight work (a bridge's last batch) before being cancelled. (env: QS_SHUTDOWN_TIMEOUT)", valueName: "duration"))
    public var shutdownTimeout: Interval = QSEnv.value("QS_SHUTDOWN_TIMEOUT", Interval(.seconds(10)))

    @Option(help: ArgumentHelp("Once every listener is up, write their names and bound addresses (the real port where 0 was asked) to this file as JSON, atomically; removed on exit. (env: QS_READY_FILE)", valueName: "path"))
    public var readyFile: String = QSEnv.string("QS_READY_FILE") ?? ""

    @Option(help: ArgumentHelp("Close a connection to any listener that sends nothing for this long, whose request is not whole and answered this long after its first byte (a peer trickling bytes), or that takes none of the bytes sent to it for this long; each is counted (qs_connections_closed_total). 0 turns it off. (env: QS_IDLE_TIMEOUT)", valueName: "duration"))
    public var idleTimeout: Interval = QSEnv.value("QS_IDLE_TIMEOUT", Interval(.seconds(60)))

    @Option(help: ArgumentHelp("Connections each listener holds at once; past it new ones are closed on arrival and counted (qs_connections_refused_total). The process also keeps a tenth of its open-file limit for its own work. (env: QS_MAX_CONNECTIONS)", valueName: "n"))
    public var maxConnections: Int = QSEnv.value("QS_MAX_CONNECTIONS", 10_000)

    @Option(help: ArgumentHelp("Connections one peer address holds at once on each listener; past it its new ones are closed on arrival and counted. (env: QS_MAX_CONNECTIONS_PER_PEER)", valueName: "n"))
    public var maxConnectionsPerPeer: Int = QSEnv.value("QS_MAX_CONNECTIONS_PER_PEER", 1_000)

    public init() {}

    /// What every listener of the daemon allows (`--idle-timeout`, `--max-connections`, `--max-connections-per-peer`).
    public var connectionLimits: ConnectionLimits {
        ConnectionLimits(idleTimeout: .nanoseconds(Int64(idleTimeout.seconds * 1e9)), maxConnections: maxConnections,
                         maxPerPeer: maxConnectionsPerPeer)
    }

    public func validate() throws {
        guard maxConnections > 0 else { throw ValidationError("--max-connections must be positive") }
        guard maxConnectionsPerPeer > 0 else { throw ValidationError("--max-connections-per-peer must be positive") }
        guard idleTimeout.duration >= .zero else { throw ValidationError("--idle-timeout must be 0 (off) or more, e.g. 60s") }
        if let admin = adminEndpoint(), !admin.isLocalOnly, adminTokenFile.isEmpty {
            throw ValidationError("--admin \(admin) is not loopback and no --admin-token-file is set: anyone who reaches it could use its actions (POST /upstream). Give --admin-token-file FILE (or QS_ADMIN_TOKEN_FILE), or bind --admin to 127.0.0.1")
        }
    }

    /// The admin port's token gate (`--admin-token-file`; open when there is none, which
    /// `validate` allows on loopback only).
    public func adminGate(logger: Logger) throws -> TokenGate {
        TokenGate(guarding: "admin", token: try adminToken(), flag: "--admin-token-file", logger: logger)
    }

    /// The admin token's bytes (`--admin-token-file`), nil without one.
    public func adminToken() throws -> [UInt8]? {
        try TokenFile.optional(adminTokenFile, flag: "--admin-token-file", minimumBytes: 16)
    }

    public var readyLagSeconds: Double { readyLag.seconds }

    /// A service group stopping on SIGTERM/SIGINT within `--shutdown-timeout` and running
    /// `reload` on SIGHUP (logging "nothing to reload" without one; never exiting); with
    /// `--ready-file`, the file lists the listeners of every `ListeningService` among
    /// `services` once they are all bound.
    public func serviceGroup(_ services: [ServiceGroupConfiguration.ServiceConfiguration], logger: Logger, toldFirst: [any Service] = [],
                             reload: (@Sendable () -> Void)? = nil, nested: Bool = false, alsoListening: [Listener] = []) async -> ServiceGroup {
        var services = services
        services.append(.init(service: await HangupService(reload: reload, logger: logger)))
        if !readyFile.isEmpty {
            let listeners = services.compactMap { ($0.service as? any ListeningService)?.listener } + alsoListening
            services.append(.init(service: ReadyFile(path: readyFile, listeners: listeners, logger: logger)))
        }
        // Last in the list: the group tells services of a graceful shutdown in reverse
        // order, each after the one before it has finished.
        services += toldFirst.map { .init(service: $0) }
        // A nested group stops when the group running it does (that one traps the signals).
        var config = ServiceGroupConfiguration(services: services, gracefulShutdownSignals: nested ? [] : [.sigterm, .sigint], logger: logger)
        config.maximumGracefulShutdownDuration = shutdownTimeout.duration
        return ServiceGroup(configuration: config)
    }

    /// The outer group of a daemon whose admin server must answer before its other
    /// services can be built (a replica bootstrapping its empty store): `first` (the admin
    /// server) starts at once and stops last; `body` builds and runs the rest, as a group
    /// made with `serviceGroup(…, nested: true)`.
    public func phasedGroup(first: [any Service], phase: AdminPhase? = nil, body: @escaping @Sendable () async throws -> Void,
                            logger: Logger) -> ServiceGroup {
        let services = first.map { ServiceGroupConfiguration.ServiceConfiguration(service: $0) }
            + [.init(service: BodyService(body: body, stopping: { phase?.beginStopping() }))]
        var config = ServiceGroupConfiguration(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        config.maximumGracefulShutdownDuration = shutdownTimeout.duration
        return ServiceGroup(configuration: config)
    }

    public func adminEndpoint() -> Endpoint? { admin.value?.endpoint }

    /// Refuses a start bound to fail for want of an address (`Listener.checkAvailable`):
    /// the admin address and `others`, checked before the daemon creates, downloads or
    /// writes anything. The error names the flag, as the listener's own would.
    public func checkListenersAvailable(_ others: [(listener: String, endpoints: [Endpoint])] = []) throws {
        var all = others
        if let admin = adminEndpoint() { all.append(("admin", [admin])) }
        try Self.refuseSharedAddresses(all)
        if !readyFile.isEmpty {
            // Found now, not once the store is made and the listeners are up.
            let directory = URL(fileURLWithPath: readyFile).deletingLastPathComponent().path
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
                throw StartError("--ready-file \(readyFile): its directory \(directory) does not exist: make it or give another path")
            }
            guard access(directory, W_OK) == 0 else {
                throw StartError("--ready-file \(readyFile): its directory \(directory) is not writable by this user")
            }
        }
        for (listener, endpoints) in all { try Listener.checkAvailable(listener: listener, endpoints: endpoints) }
    }

    /// Two of one daemon's listeners on one address: the second would fail to bind (said
    /// to be "another process"), or, for a Unix path, take the first's socket away.
    static func refuseSharedAddresses(_ listeners: [(listener: String, endpoints: [Endpoint])]) throws {
        let flat = listeners.flatMap { l in l.endpoints.map { (flag: ListenError.flag(for: l.listener, endpoint: $0), endpoint: $0) } }
        for (i, a) in flat.enumerated() {
            for b in flat[(i + 1)...] where Listener.collide(a.endpoint, b.endpoint) {
                throw ValidationError("\(a.flag) \(a.endpoint) and \(b.flag) \(b.endpoint) are one address: give each listener its own")
            }
        }
    }


    /// Sets up logging and metrics for the process (call once, first thing in `run`), and
    /// caps malloc's arenas (`ProcessMemory.capArenas`).
    public func bootstrap(label: String) -> (Logger, PrometheusCollectorRegistry) {
        ProcessMemory.capArenas()
        let level = logLevel.level
        let format = logFormat
        LoggingSystem.bootstrap { name in
            var h: any LogHandler
            switch format {
            case .json: h = JSONLogHandler(label: name)
            case .text: h = TextLogHandler(label: name)
            }
            h.logLevel = level
            return h
        }
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        var logger = Logger(label: label)
        logger.logLevel = level
        QSVersion.announce(label, logger: logger)
        return (logger, registry)
    }
}

/// A service that runs a closure (a daemon's phases, in `ServiceOptions.phasedGroup`).
struct BodyService: Service {
    let body: @Sendable () async throws -> Void
    /// Told when graceful shutdown begins (the body is the first service told).
    let stopping: @Sendable () -> Void
    func run() async throws {
        try await withGracefulShutdownHandler { try await body() } onGracefulShutdown: { stopping() }
    }
}

/// The process's own memory, as malloc keeps it.
public enum ProcessMemory {
    /// At most two malloc arenas a core (at least two) unless `MALLOC_ARENA_MAX` says
    /// otherwise: glibc's default of eight a core let a node's reader threads, each in an
    /// arena of its own, keep 19-23 MB of freed memory under load where two arenas a core
    /// keep 12 (docs/benchmarks.md, "Thirty-fifth session: malloc arenas").
    public static func capArenas() {
        guard ProcessInfo.processInfo.environment["MALLOC_ARENA_MAX"] == nil else { return }
        _ = qs_cap_malloc_arenas(Int32(max(2, 2 * ProcessInfo.processInfo.activeProcessorCount)))
    }
}
