import ArgumentParser
import Logging
import Metrics
import Prometheus

public enum LogFormat: String, ExpressibleByArgument, CaseIterable, Sendable {
    case json, text
}

/// Options every daemon shares: logging and the admin HTTP port.
public struct ServiceOptions: ParsableArguments, Sendable {
    @Option(help: ArgumentHelp("Log format on stderr: json or text. (env: QS_LOG_FORMAT)", valueName: "format"))
    public var logFormat: LogFormat = LogFormat(rawValue: QSEnv.string("QS_LOG_FORMAT") ?? "json") ?? .json

    @Option(help: ArgumentHelp("Lowest level logged: trace, debug, info, notice, warning, error, critical. (env: QS_LOG_LEVEL)", valueName: "level"))
    public var logLevel: String = QSEnv.string("QS_LOG_LEVEL") ?? "info"

    @Option(help: ArgumentHelp("Admin HTTP address serving /healthz, /readyz and /metrics, as HOST:PORT; empty for none. (env: QS_ADMIN)", valueName: "host:port"))
    public var admin: String = QSEnv.string("QS_ADMIN") ?? ""

    public init() {}

    public func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level '\(logLevel)' is not one of trace, debug, info, notice, warning, error, critical")
        }
        if !admin.isEmpty { _ = try adminEndpoint() }
    }

    public func adminEndpoint() throws -> Endpoint? {
        if admin.isEmpty { return nil }
        do { return try Endpoint(parsing: admin) } catch { throw ValidationError("--admin: \(error)") }
    }

    /// Sets up logging and metrics for the process (call once, first thing in `run`).
    public func bootstrap(label: String) -> (Logger, PrometheusCollectorRegistry) {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        let format = logFormat
        LoggingSystem.bootstrap { name in
            var h: any LogHandler
            switch format {
            case .json: h = JSONLogHandler(label: name)
            case .text: h = StreamLogHandler.standardError(label: name)
            }
            h.logLevel = level
            return h
        }
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        var logger = Logger(label: label)
        logger.logLevel = level
        return (logger, registry)
    }
}
