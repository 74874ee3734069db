import Logging
import NIOCore
import NIOPosix
import QSNet
import ServiceLifecycle

/// A fake Kyoto Tycoon server: HTTP RPC, RESTful access, the binary protocol and the
/// replication feed on one port, with an update log in KT's file format. A `Service`:
/// `run()` serves until graceful shutdown (connections drained, the update log flushed)
/// or cancellation. Its listener is named `kt`; `listener.addresses` gives the real port
/// when the configuration asks for port 0.
///
/// ```swift
/// var config = FakeKTConfiguration()
/// config.port = 0
/// config.databases = ["main.kch", "aux.kct"]
/// config.ulogDirectory = dir
/// let server = try FakeKTServer(configuration: config)
/// let group = ServiceGroup(services: [server], logger: logger)
/// // run the group in a task; `try await server.listener.addresses` is the port;
/// // `await group.triggerGracefulShutdown()` stops it.
/// ```
///
/// A server runs once.
public final class FakeKTServer: ListeningService {
    public let configuration: FakeKTConfiguration
    public let listener: Listener
    let core: FakeKTCore
    private let group: MultiThreadedEventLoopGroup

    public init(configuration: FakeKTConfiguration, logger: Logger = Logger(label: "fakekt")) throws {
        self.configuration = configuration
        core = try FakeKTCore(configuration: configuration, logger: logger)
        group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, configuration.threads))
        let host = configuration.host.isEmpty ? "0.0.0.0" : configuration.host
        // ktserver's session timeout (-tout): a connection that sends nothing that long is
        // closed; replication connections take the timeout out (they only listen).
        let timeout = configuration.timeout
        let idle: TimeAmount = timeout > 0 && timeout.isFinite ? .milliseconds(Int64(min(timeout, 86_400) * 1000)) : .zero
        listener = Listener(name: "kt", endpoints: [.tcp(host: host, port: configuration.port)], drain: .pipeline,
                            limits: ConnectionLimits(idleTimeout: idle, maxConnections: .max, maxPerPeer: .max), group: group, logger: logger)
    }

    public func run() async throws {
        let core = self.core
        let served: Result<Void, any Error>
        do {
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask {
                    try await self.listener.run { channel in
                        try ConnectionSetup.configure(channel, core: core)
                    }
                }
                tasks.addTask {
                    let address = try await self.listener.addresses.first
                    core.logger.info("starting the server", metadata: [
                        "address": "\(address.map(\.description) ?? "?")",
                        "databases": "\(self.configuration.databases)", "sid": "\(self.configuration.sid)",
                    ])
                }
                try await tasks.waitForAll()
            }
            served = .success(())
        } catch {
            served = .failure(error)
        }
        core.flushUpdateLog()
        try await group.shutdownGracefully()
        core.logger.info("the server finished")
        try served.get()
    }

    /// Changes the fault plan, as the admin call does.
    public func setFaults(_ plan: FaultPlan) {
        core.faults.withLockedValue { $0 = plan }
    }

    /// Waits until every update so far is written to the ulog files.
    public func flushUpdateLog() {
        core.flushUpdateLog()
    }
}
