import Logging
import NIOCore
import NIOPosix
import QSService
import ServiceLifecycle

/// Accepts connections on several endpoints (TCP and Unix sockets) and runs one async
/// task per connection, until graceful shutdown or cancellation: then the listeners and
/// every open connection are closed. Both read servers are built on it.
struct ConnectionListener<Inbound: Sendable, Outbound: Sendable>: Sendable {
    typealias Connection = NIOAsyncChannel<Inbound, Outbound>

    let name: String
    let endpoints: [Endpoint]
    let group: any EventLoopGroup
    let logger: Logger
    /// Sets up a new connection's pipeline (runs on its event loop).
    let configure: @Sendable (Channel) throws -> Connection

    func run(_ handle: @escaping @Sendable (Connection, String) async -> Void) async throws {
        let configure = self.configure
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.autoRead, value: true)
        var servers = [NIOAsyncChannel<Connection, Never>]()
        for endpoint in endpoints {
            let initializer: @Sendable (Channel) -> EventLoopFuture<Connection> = { channel in
                channel.eventLoop.makeCompletedFuture { try configure(channel) }
            }
            let server: NIOAsyncChannel<Connection, Never>
            switch endpoint {
            case let .tcp(host, port):
                server = try await bootstrap
                    .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                    .bind(host: host, port: port, childChannelInitializer: initializer)
            case let .unix(path):
                server = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true,
                                                  childChannelInitializer: initializer)
            }
            servers.append(server)
            logger.info("\(name) listening", metadata: ["address": "\(endpoint)"])
        }
        let bound = servers
        // Graceful shutdown cancels the accept loops and every connection task; the
        // cancellation that results is the normal way out.
        do {
            try await serve(bound, handle)
        } catch is CancellationError {
        }
        logger.info("\(name) stopped")
    }

    private func serve(_ bound: [NIOAsyncChannel<Connection, Never>],
                       _ handle: @escaping @Sendable (Connection, String) async -> Void) async throws {
        try await cancelWhenGracefulShutdown {
            try await withThrowingDiscardingTaskGroup { tasks in
                for server in bound {
                    tasks.addTask {
                        try await server.executeThenClose { inbound in
                            try await withThrowingDiscardingTaskGroup { connections in
                                for try await connection in inbound {
                                    let peer = connection.channel.remoteAddress?.peerDescription
                                        ?? connection.channel.localAddress?.peerDescription ?? "unknown"
                                    connections.addTask { await handle(connection, peer) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
