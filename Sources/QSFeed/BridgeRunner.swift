import Logging
import Prometheus
import QSService
import ServiceLifecycle

/// Lets executables name the registry type without importing Prometheus.
public enum PrometheusRegistryBox {
    public typealias Registry = PrometheusCollectorRegistry
}

/// Runs a bridge: the consumer plus the admin server, stopping on SIGTERM/SIGINT after
/// the consumer has flushed. Returns when a finite source is done; throws (after logging)
/// when the bridge had to stop.
public func runBridge<S: FeedSource>(consumer: FeedConsumer<S>, adminEndpoint: Endpoint?,
                                     registry: PrometheusCollectorRegistry, logger: Logger) async throws {
    var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
        .init(service: consumer, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup),
    ]
    if let adminEndpoint {
        let root = consumer.root
        services.append(.init(service: AdminServer(endpoint: adminEndpoint, registry: registry, logger: logger) {
            let s = consumer.status
            if s.finished { return Readiness(ready: true, detail: "source finished; everything read is applied") }
            return Readiness(ready: s.sourceConnected, detail: s.sourceConnected ? "reading source; checkpoint \(s.checkpoint.map { String($0) } ?? "none")" : "not connected to the source")
        }))
        _ = root
    }
    let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
    try await group.run()
}
