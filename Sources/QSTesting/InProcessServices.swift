import Logging
import QSNet
import ServiceLifecycle

/// Services of the project (servers built on `Listener`) running in this process as a
/// `ServiceGroup`, the way the daemons run them: `stop()` triggers graceful shutdown and
/// waits until every service has returned.
public final class InProcessServices: Sendable {
    private let group: ServiceGroup
    private let task: Task<Void, any Error>

    /// Starts `services`; returns once every listener among them is bound (so the real
    /// ports are known), or throws what binding threw.
    public init(_ services: [any Service], logger: Logger) async throws {
        let group = ServiceGroup(services: services, logger: logger)
        self.group = group
        task = Task { try await group.run() }
        do {
            for case let server as any ListeningService in services {
                _ = try await server.listener.addresses
            }
        } catch {
            await group.triggerGracefulShutdown()
            _ = try? await task.value
            throw error
        }
    }

    /// Graceful shutdown, awaited: listeners drain and every service's `run()` returns.
    public func stop() async throws {
        await group.triggerGracefulShutdown()
        try await task.value
    }
}

extension Listener {
    /// The first bound TCP port (the real one when port 0 was asked).
    public func port() async throws -> Int {
        guard let port = try await addresses.lazy.compactMap(\.port).first else {
            throw HarnessError("\(name) listens on no TCP port")
        }
        return port
    }
}
