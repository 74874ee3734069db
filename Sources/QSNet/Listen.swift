import NIOCore
import NIOPosix
import ServiceLifecycle

/// Binds a server bootstrap to a TCP or Unix endpoint.
public func bind(_ bootstrap: ServerBootstrap, to endpoint: Endpoint) async throws -> Channel {
    switch endpoint {
    case let .tcp(host, port):
        return try await bootstrap.bind(host: host, port: port).get()
    case let .unix(path):
        return try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
    }
}

/// Waits until the channel closes; on graceful shutdown or cancellation closes it.
public func runUntilGracefulShutdown(_ channel: Channel) async throws {
    try await withTaskCancellationOrGracefulShutdownHandler {
        try await channel.closeFuture.get()
    } onCancelOrGracefulShutdown: {
        channel.close(promise: nil)
    }
}
