import ArgumentParser
import Foundation
import Logging
import Prometheus
import QSFeed
import QSNet
import ServiceLifecycle

/// Lets executables name the registry type without importing Prometheus.
public enum PrometheusRegistryBox {
    public typealias Registry = PrometheusCollectorRegistry
}

/// Runs a bridge: the consumer plus the admin server, stopping on SIGTERM/SIGINT after
/// the consumer has flushed. Returns when a finite source is done; throws (after logging)
/// when the bridge had to stop.
public func runBridge<S: FeedSource>(consumer: FeedConsumer<S>, service: ServiceOptions,
                                     registry: PrometheusCollectorRegistry, logger: Logger) async throws {
    let adminEndpoint = service.adminEndpoint()
    let readyLag = service.readyLagSeconds
    var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
        .init(service: consumer, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup),
    ]
    if let adminEndpoint {
        services.append(.init(service: AdminServer(endpoint: adminEndpoint, registry: registry, logger: logger, limits: service.connectionLimits,
                                                   actionGate: try service.adminGate(logger: logger),
                                                   beforeScrape: { consumer.refreshGauges() }) {
            bridgeReadiness(consumer.status, root: consumer.root.endpoint, readyLag: readyLag)
        }))
    }
    do {
        try await service.serviceGroup(services, logger: logger).run()
    } catch is CancellationError {
        // The group is cancelled when --shutdown-timeout passes before the consumer has
        // flushed (the root is gone or slow). Nothing is lost: the changes not applied are
        // still in the source, and the next start resumes from the root's checkpoint.
        let s = consumer.status
        logger.error("shutdown timeout passed before the pending batch reached the root: the changes after the checkpoint were not applied; they stay in the source and are read again from the checkpoint at the next start",
                     metadata: ["shutdown-timeout": "\(service.shutdownTimeout)", "checkpoint": "\(s.checkpoint.map { "\($0)" } ?? "unknown")"])
        throw ExitCode(75)
    }
}

/// What a bridge's `/readyz` says, from its status as of now.
func bridgeReadiness<S>(_ s: FeedConsumer<S>.Status, root: Endpoint, readyLag: Double) -> Readiness {
    if s.finished { return Readiness(ready: true, detail: "source finished; everything read is applied") }
    // The root's state first: a root dead, hung or refusing is why nothing is applied, and
    // "no progress" alone would not say so.
    guard s.rootConnected else {
        return Readiness(ready: false, detail: "not connected to the root \(root)\(s.rootError.map { ": \($0)" } ?? "")")
    }
    if let stall = s.rootStall {
        return Readiness(ready: false, detail: "the root \(root) is connected but not answering: \(stall)")
    }
    // Before the copy's progress and the lag: a root refusing every write (out of room, a
    // failing disk) makes both stand still, and they would not say why.
    if let refusing = s.rootRefusing {
        return Readiness(ready: false, detail: String(format: "the root %@ refuses the bridge's writes (retrying; the last refusal %.0f s ago): %@",
                                                      "\(root)", refusing.seconds, refusing.why))
    }
    if s.stalledSeconds > readyLag {
        let why = s.rootError.map { "; last root error: \($0)" } ?? ""
        return Readiness(ready: false, detail: String(format: "no progress: %d changes pending and nothing applied for %.1f s (--ready-lag %.1f s)",
                                                      s.pendingChanges, s.stalledSeconds, readyLag) + why)
    }
    if let preparing = s.preparing { return Readiness(ready: false, detail: preparing) }
    guard s.sourceConnected else {
        let silent = s.sourceSilent ? s.sourceSilentSeconds.map { String(format: " (it has sent nothing for %.1f s; connecting again)", $0) } ?? "" : ""
        return Readiness(ready: false, detail: "not connected to the source" + (s.sourceError.map { ": \($0)" } ?? "") + silent)
    }
    guard let cp = s.checkpoint else { return Readiness(ready: false, detail: "no answer from the root yet") }

    if let lag = s.lagSeconds, lag > readyLag {
        // Behind because the source says nothing at all: it hangs or the network drops
        // its packets, which is not catching up.
        if s.sourceSilent, let silent = s.sourceSilentSeconds, let beat = s.sourceHeartbeat {
            // Silence counts across reconnections: past the timeout the connection has been made again already.
            let retry = s.sourceSilenceTimeout.map {
                silent < $0.seconds ? String(format: "; the connection is made again after %.0f s of silence", $0.seconds)
                    : String(format: "; connecting again after each %.0f s of silence has not helped", $0.seconds)
            } ?? ""
            return Readiness(ready: false, detail: String(format: "the source has sent nothing, not even a heartbeat, for %.1f s (it sends one every %.0f s when idle): it hangs or the network drops its traffic%@; %.1f s behind (--ready-lag %.1f s)",
                                                          silent, beat.seconds, retry, lag, readyLag))
        }
        return Readiness(ready: false, detail: String(format: "catching up: %.1f s behind the source (--ready-lag %.1f s)", lag, readyLag))
    }
    return Readiness(ready: true, detail: "reading source; checkpoint \(cp)\(s.lagSeconds.map { String(format: ", lag %.2f s", $0) } ?? "")")
}
