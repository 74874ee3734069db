import Logging
import NIOCore
import NIOPosix
import QSNet
import ServiceLifecycle

/// Accepts connections on several endpoints (TCP and Unix sockets) and runs one async
/// task per connection, until graceful shutdown or cancellation: then the listeners and
/// every open connection are closed. Both read servers are built on it.
struct ConnectionListener<Connection: Sendable>: Sendable {
    /// A configured connection and its peer, for log lines.
    struct Accepted: Sendable {
        var connection: Connection
        var peer: String
    }

    typealias Server = NIOAsyncChannel<Accepted, Never>

    let name: String
    let endpoints: [Endpoint]
    let group: any EventLoopGroup
    let logger: Logger
    /// Sets up a new connection's pipeline (runs on its event loop) and returns what the
    /// connection's task works with.
    let configure: @Sendable (Channel) throws -> Connection

    func run(_ handle: @escaping @Sendable (Connection, String) async -> Void) async throws {
        var servers = [Server]()
        for endpoint in endpoints {
            do {
                servers.append(try await bind(endpoint))
            } catch {
                // The endpoints already bound are closed again before the error goes up.
                for server in servers { try? await server.channel.close() }
                throw error
            }
            logger.info("\(name) listening", metadata: ["address": "\(endpoint)"])
        }
        // Graceful shutdown cancels the accept loops and every connection task; the
        // cancellation that results is the normal way out.
        do {
            try await serve(servers, handle)
        } catch is CancellationError {
        }
        logger.info("\(name) stopped")
    }

    private func bind(_ endpoint: Endpoint) async throws -> Server {
        let configure = self.configure
        let initializer: @Sendable (Channel) -> EventLoopFuture<Accepted> = { channel in
            channel.eventLoop.makeCompletedFuture {
                let peer = channel.remoteAddress?.peerDescription ?? channel.localAddress?.peerDescription ?? "unknown"
                return Accepted(connection: try configure(channel), peer: peer)
            }
        }
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.autoRead, value: true)
        switch endpoint {
        case let .tcp(host, port):
            return try await bootstrap
                .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
                .bind(host: host, port: port, childChannelInitializer: initializer)
        case let .unix(path):
            return try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true,
                                            childChannelInitializer: initializer)
        }
    }

    private func serve(_ servers: [Server], _ handle: @escaping @Sendable (Connection, String) async -> Void) async throws {
        try await cancelWhenGracefulShutdown {
            try await withThrowingDiscardingTaskGroup { tasks in
                for server in servers {
                    tasks.addTask {
                        try await server.executeThenClose { inbound in
                            try await withThrowingDiscardingTaskGroup { connections in
                                for try await accepted in inbound {
                                    connections.addTask { await handle(accepted.connection, accepted.peer) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
