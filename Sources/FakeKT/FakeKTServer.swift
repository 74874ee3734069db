import Logging
import NIOCore
import NIOPosix
import NIOConcurrencyHelpers

/// A fake Kyoto Tycoon server: HTTP RPC, RESTful access, the binary protocol and the
/// replication feed on one port, with an update log in KT's file format.
///
/// ```swift
/// var config = FakeKTConfiguration()
/// config.port = 0
/// config.databases = ["main.kch", "aux.kct"]
/// config.ulogDirectory = dir
/// let server = try FakeKTServer(configuration: config)
/// let port = try await server.start()
/// ...
/// try await server.shutdown()
/// ```
public final class FakeKTServer: Sendable {
    public let configuration: FakeKTConfiguration
    let core: FakeKTCore
    private let group: MultiThreadedEventLoopGroup
    private let channel: NIOLockedValueBoxChannel

    public init(configuration: FakeKTConfiguration, logger: Logger = Logger(label: "fakekt")) throws {
        self.configuration = configuration
        self.core = try FakeKTCore(configuration: configuration, logger: logger)
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, configuration.threads))
        self.channel = NIOLockedValueBoxChannel()
    }

    /// Binds and starts serving; returns the port (useful with port 0).
    @discardableResult
    public func start() async throws -> Int {
        let core = self.core
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let pipeline = channel.pipeline.syncOperations
                    try IdleCloser.install(timeout: core.configuration.timeout, in: pipeline)
                    try pipeline.addHandler(ProtocolSniffer(core: core))
                }
            }
        let host = configuration.host.isEmpty ? "0.0.0.0" : configuration.host
        let ch = try await bootstrap.bind(host: host, port: configuration.port).get()
        channel.set(ch)
        core.logger.info("starting the server", metadata: [
            "host": "\(host)", "port": "\(ch.localAddress?.port ?? 0)",
            "databases": "\(configuration.databases)", "sid": "\(configuration.sid)",
        ])
        return ch.localAddress?.port ?? configuration.port
    }

    /// The bound port, once started.
    public var port: Int? { channel.get()?.localAddress?.port }

    /// Changes the fault plan, as the admin call does.
    public func setFaults(_ plan: FaultPlan) {
        core.faults.withLockedValue { $0 = plan }
    }

    /// Waits until every update so far is written to the ulog files.
    public func flushUpdateLog() {
        core.flushUpdateLog()
    }

    /// Stops listening, closes connections and flushes the update log.
    public func shutdown() async throws {
        if let ch = channel.get() {
            try? await ch.close()
        }
        core.flushUpdateLog()
        try await group.shutdownGracefully()
        core.logger.info("the server finished")
    }
}

/// The listening channel, set once started.
final class NIOLockedValueBoxChannel: Sendable {
    private let box = NIOLockedValueBox<Channel?>(nil)
    func set(_ c: Channel) { box.withLockedValue { $0 = c } }
    func get() -> Channel? { box.withLockedValue { $0 } }
}
