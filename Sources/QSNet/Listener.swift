import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOPosix
import ServiceLifecycle

/// A connection a `Listener` accepted, as its task sees it.
public struct AcceptedConnection<Connection: Sendable>: Sendable {
    /// What the listener's `configure` made of the channel.
    public let connection: Connection
    /// The peer, for log lines.
    public let peer: String
    /// Marks requests in flight (`DrainStyle.requests`); nil for `.pipeline`.
    public let drain: RequestDrain?
    public let channel: any Channel
}

/// The one server shape: binds one or more endpoints (TCP and Unix sockets), runs each
/// connection as a child task of `run`'s task, and on graceful shutdown stops accepting,
/// lets requests in flight finish, closes idle connections and then returns. Task
/// cancellation (the shutdown timeout) closes every connection at once.
///
/// Every server of the project is one: the write protocol (and the replication and
/// snapshot streams it carries), memcached and KT HTTP reads, the admin server, fakekt.
/// `addresses` gives the bound addresses once every endpoint is bound, so a server
/// started on port 0 tells its real port (log line, `ReadyFile`, tests).
public final class Listener: Sendable {
    public let name: String
    public let endpoints: [Endpoint]
    let drainStyle: DrainStyle
    public let limits: ConnectionLimits
    let counter: ConnectionCounter
    let backlog: Int
    let group: any EventLoopGroup
    let logger: Logger
    let bound = BoundAddresses()
    /// The listener's one rate limit on its refusal and request-deadline log lines.
    let refusals = RateLimitedLog()

    /// - Parameters:
    ///   - name: what the listener serves (`write`, `memcached`, `kt-http`, `admin`, `kt`):
    ///     its log lines and its entry in the ready file.
    ///   - limits: the idle timeout (reads, request deadlines and writes: `ConnectionGuard`) and the
    ///     connection caps (`ConnectionLimits`); the process's file-descriptor reserve
    ///     (`FileDescriptorBudget`) holds whatever they say.
    public init(name: String, endpoints: [Endpoint], drain: DrainStyle, limits: ConnectionLimits = ConnectionLimits(),
                backlog: Int = 256, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger) {
        self.name = name
        self.endpoints = endpoints
        self.drainStyle = drain
        self.limits = limits
        self.counter = ConnectionCounter(listener: name, limits: limits)
        self.backlog = backlog
        self.group = group
        self.logger = logger
    }

    /// The addresses bound now, without waiting: `endpoints` until `run` has bound them
    /// (a port 0 then stays 0).
    public var boundNow: [Endpoint] { bound.now ?? endpoints }

    /// The addresses bound, in the order of `endpoints`, with the real port where port 0
    /// was asked for. Waits until `run` has bound them all; throws what binding threw.
    public var addresses: [Endpoint] {
        get async throws { try await bound.wait() }
    }

    /// Serves until graceful shutdown (drained) or cancellation (closed). `configure` sets
    /// up a new connection's pipeline on its event loop and returns what `handle` works
    /// with; `handle` runs as the connection's task and the connection is closed when it
    /// returns.
    public func run<Connection: Sendable>(configure: @escaping @Sendable (any Channel) throws -> Connection,
                                          handle: @escaping @Sendable (AcceptedConnection<Connection>) async -> Void) async throws {
        try await run(.guarded(configure), handle: handle)
    }

    /// For a `.pipeline` server whose one handler answers every request itself: the
    /// listener installs no `ConnectionGuard`; `configure` gets the connection's
    /// `ConnectionWatch` (the same idle timeout, request deadline and write timeout, and the
    /// same counting and logging of the closes) for that handler to drive from its own
    /// events, which saves the guard's hop on each of them.
    public func run(watched configure: @escaping @Sendable (any Channel, ConnectionWatch) throws -> Void) async throws {
        precondition(drainStyle == .pipeline, "a watched listener drains through its pipeline")
        try await run(.watched(configure)) { (_: AcceptedConnection<Void>) in }
    }

    /// What `configure` makes of a connection, with or without the guard in its pipeline.
    enum Configure<Connection: Sendable>: Sendable {
        case guarded(@Sendable (any Channel) throws -> Connection)
        case watched(@Sendable (any Channel, ConnectionWatch) throws -> Connection)
    }

    private func run<Connection: Sendable>(_ configure: Configure<Connection>,
                                           handle: @escaping @Sendable (AcceptedConnection<Connection>) async -> Void) async throws {
        typealias Server = NIOAsyncChannel<AcceptedConnection<Connection>, Never>
        var binding = [(server: Server, quiesce: ServerQuiescingHelper)]()
        do {
            for endpoint in endpoints {
                binding.append(try await bind(endpoint, configure: configure))
            }
        } catch {
            // The endpoints already bound are closed again before the error goes up.
            for (server, _) in binding { try? await server.channel.close() }
            bound.fail(error)
            throw error
        }
        let servers = binding
        let addresses = servers.map { Endpoint(boundTo: $0.server.channel) }
        for address in addresses {
            logger.info("\(name) listening", metadata: ["listener": "\(name)", "address": "\(address)"])
        }
        bound.succeed(addresses)

        let name = self.name, logger = self.logger
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { accepting in
                for (server, _) in servers {
                    accepting.addTask {
                        await withDiscardingTaskGroup { connections in
                            do {
                                try await server.executeThenClose { inbound in
                                    for try await accepted in inbound {
                                        connections.addTask { await Self.serve(accepted, handle) }
                                    }
                                }
                            } catch is CancellationError {
                            } catch {
                                logger.error("\(name) stopped accepting", metadata: ["listener": "\(name)", "error": "\(error)"])
                            }
                        }
                    }
                }
            }
        } onGracefulShutdown: {
            logger.info("\(name) draining: no new connections, finishing requests in flight",
                        metadata: ["listener": "\(name)"])
            for (_, quiesce) in servers { quiesce.initiateShutdown(promise: nil) }
        }
        logger.info("\(name) stopped", metadata: ["listener": "\(name)"])
    }

    /// For servers whose pipeline handlers do all the work (`.pipeline` style): each
    /// connection's task waits until the connection closes.
    public func run(configure: @escaping @Sendable (any Channel) throws -> Void) async throws {
        try await run(configure: configure) { (_: AcceptedConnection<Void>) in }
    }

    static func serve<Connection>(_ accepted: AcceptedConnection<Connection>,
                                          _ handle: @Sendable (AcceptedConnection<Connection>) async -> Void) async {
        let channel = accepted.channel
        await withTaskCancellationHandler {
            await handle(accepted)
            // A pipeline-served connection (or a task that returned early) lives until
            // its channel closes.
            try? await channel.closeFuture.get()
        } onCancel: {
            channel.close(promise: nil)
        }
    }

    private func bind<Connection: Sendable>(_ endpoint: Endpoint, configure: Configure<Connection>)
        async throws -> (server: NIOAsyncChannel<AcceptedConnection<Connection>, Never>, quiesce: ServerQuiescingHelper) {
        let quiesce = ServerQuiescingHelper(group: group)
        let counter = self.counter, refusals = self.refusals, logger = self.logger, name = self.name
        let initializer: @Sendable (any Channel) -> EventLoopFuture<AcceptedConnection<Connection>> = { [self] channel in
            // Caps first: a refused connection is closed before anything is set up for it.
            let peerIP = channel.remoteAddress?.ipAddress
            if let refusal = counter.admit(peer: peerIP) {
                refusals.warning(logger, "\(name) refused a connection", peer: peerIP ?? "unix",
                                 metadata: ["listener": "\(name)", "reason": "\(refusal.rawValue)", "limit": "\(Self.limit(refusal, counter))"])
                channel.close(promise: nil)
                return channel.eventLoop.makeFailedFuture(ConnectionRefused(reason: refusal))
            }
            channel.closeFuture.whenComplete { _ in counter.release(peer: peerIP) }
            return setUp(channel, peerIP: peerIP, configure: configure)
        }
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: Int32(clamping: backlog))
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(quiesce.makeServerChannelHandler(channel: channel))
                }
            }
            .childChannelOption(.autoRead, value: true)
        do {
            switch endpoint {
            case let .tcp(host, port):
                let server = try await bootstrap
                    .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
                    .bind(host: host, port: port, childChannelInitializer: initializer)
                return (server, quiesce)
            case let .unix(path):
                let server = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true,
                                                      childChannelInitializer: initializer)
                return (server, quiesce)
            }
        } catch {
            throw ListenError(listener: name, endpoint: endpoint, underlying: error)
        }
    }
}

extension Listener {
    /// A connection's pipeline as the listener sets it up once it is admitted (and its place
    /// is given back when it closes): the guard with the idle timeout, request deadline and
    /// write timeout (or, `.watched`, the watch for `configure`'s handler to drive), the
    /// drain of `.requests` listeners, the counting and logging of closes, then
    /// `configure`'s handlers. Accepted connections and those a threaded listener hands to
    /// the event loops (`ThreadedHandOver`) are set up alike. A connection that could not
    /// be set up is closed.
    func setUp<Connection: Sendable>(_ channel: any Channel, peerIP: String?, configure: Configure<Connection>)
        -> EventLoopFuture<AcceptedConnection<Connection>> {
        let idleTimeout = limits.idleTimeout, style = drainStyle, counter = self.counter
        let refusals = self.refusals, logger = self.logger, name = self.name
        let set = channel.eventLoop.makeCompletedFuture {
            let ops = channel.pipeline.syncOperations
            var drain: RequestDrain?
            if case .requests = style { drain = RequestDrain(channel: channel) }
            let onClose: (CloseReason, ChannelHandlerContext) -> Void = { reason, _ in
                counter.closed(reason)
                if reason == .requestTimeout {
                    refusals.warning(logger, "\(name) closed a connection: no whole request within --idle-timeout of its first byte",
                                     peer: peerIP ?? "unix", metadata: ["listener": "\(name)", "reason": "\(reason.rawValue)"])
                }
            }
            let connection: Connection
            switch configure {
            case let .guarded(configure):
                if idleTimeout.nanoseconds > 0 || drain != nil {
                    try ops.addHandler(ConnectionGuard(timeout: max(idleTimeout, .zero), drain: drain, onClose: onClose),
                                       name: ConnectionGuard.handlerName)
                }
                connection = try configure(channel)
            case let .watched(configure):
                connection = try configure(channel, ConnectionWatch(timeout: max(idleTimeout, .zero), reportsErrors: false, onClose: onClose))
            }
            let peer = channel.remoteAddress?.peerDescription ?? channel.localAddress?.peerDescription ?? "unknown"
            return AcceptedConnection(connection: connection, peer: peer, drain: drain, channel: channel)
        }
        set.whenFailure { _ in channel.close(promise: nil) }
        return set
    }
}

extension Listener {
    /// Checks, before a daemon sets anything up, that each of `endpoints` can be listened
    /// on, and throws the `ListenError` the listener would: a start that is bound to fail
    /// (a port another process holds) fails before it creates a store, downloads a snapshot
    /// or writes to a root. A TCP address (port 0 aside) is bound as the listener binds it
    /// (SO_REUSEADDR) and let go at once; a Unix path that is a socket something accepts
    /// on belongs to another process (the listener would remove it and take its clients),
    /// any other file there is refused, and a free path is bound and removed (its directory
    /// must exist and be writable). An address taken between this check and the listen
    /// still fails then.
    public static func checkAvailable(listener: String, endpoints: [Endpoint]) throws {
        for endpoint in endpoints {
            do {
                try probe(endpoint)
            } catch let error as ListenError {
                throw error
            } catch {
                throw ListenError(listener: listener, endpoint: endpoint, underlying: error)
            }
        }
    }

    private static func probe(_ endpoint: Endpoint) throws {
        switch endpoint {
        case let .tcp(host, port):
            guard port != 0 else { return }
            let address = try SocketAddress.makeAddressResolvingHost(host, port: port)
            close(try ListeningSocket.bind(address, family: address.protocol.rawValue))
        case let .unix(path):
            let address = try SocketAddress(unixDomainSocketPath: path)
            var st = stat()
            if lstat(path, &st) == 0 {
                guard st.st_mode & S_IFMT == S_IFSOCK else { throw ProbeRefusal("the path exists and is not a socket: remove it or give another path") }
                // Non-blocking: a hung owner with a full backlog must not hang this start.
                let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
                guard fd >= 0 else { throw IOError(errnoCode: errno, reason: "socket") }
                defer { close(fd) }
                let rc = address.withSockAddr { sa, len in connect(fd, sa, socklen_t(len)) }
                let e = errno
                // Only a refusal says nobody listens: the socket is left over and the
                // listener replaces it. Anything else (accepted, a full backlog, another
                // user's socket) is somebody's.
                if rc != 0, e == ECONNREFUSED { return }
                throw IOError(errnoCode: rc == 0 || e == EAGAIN || e == EINPROGRESS ? EADDRINUSE : e, reason: "connect")
            }
            close(try ListeningSocket.bind(address, family: AF_UNIX))
            unlink(path)
        }
    }

    /// Why `endpoint`'s host name does not resolve (nil when it does, or for a Unix path).
    public static func unresolved(_ endpoint: Endpoint) -> String? {
        guard case let .tcp(host, port) = endpoint else { return nil }
        do { _ = try SocketAddress.makeAddressResolvingHost(host, port: port) } catch {
            return ListenError(listener: "", endpoint: endpoint, underlying: error).reason
        }
        return nil
    }

    /// Whether two listen addresses would collide: one Unix path, or one port where the
    /// addresses resolve alike or one is a wildcard covering the other (0.0.0.0 covers IPv4;
    /// :: covers both, as Linux binds it by default).
    public static func collide(_ a: Endpoint, _ b: Endpoint) -> Bool {
        switch (a, b) {
        case let (.unix(p), .unix(q)):
            return URL(fileURLWithPath: p).standardizedFileURL.path == URL(fileURLWithPath: q).standardizedFileURL.path
        case let (.tcp(h, p), .tcp(k, q)):
            guard p == q, p != 0 else { return false }
            guard let x = try? SocketAddress.makeAddressResolvingHost(h, port: p),
                  let y = try? SocketAddress.makeAddressResolvingHost(k, port: q) else { return h == k }
            let xv6 = x.protocol == .inet6, yv6 = y.protocol == .inet6
            let xIP = x.ipAddress ?? h, yIP = y.ipAddress ?? k
            func wildcard(_ ip: String) -> Bool { ip == "0.0.0.0" || ip == "::" }
            if xIP == yIP { return true }
            if xIP == "::" || yIP == "::" { return true }
            if wildcard(xIP) || wildcard(yIP) { return xv6 == yv6 }
            return false
        default:
            return false
        }
    }

    struct ProbeRefusal: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }
}

/// A connection closed on arrival because a cap was reached.
struct ConnectionRefused: Error {
    let reason: RefusalReason
}

extension Listener {
    static func limit(_ reason: RefusalReason, _ counter: ConnectionCounter) -> Int {
        switch reason {
        case .maxConnections: return counter.limits.maxConnections
        case .perPeer: return counter.limits.maxPerPeer
        case .fileDescriptors: return counter.processCap
        }
    }
}

/// An endpoint a listener could not bind.
public struct ListenError: Error, CustomStringConvertible {
    public let listener: String
    public let endpoint: Endpoint
    public let underlying: any Error

    public var description: String {
        "\(listener): cannot listen on \(endpoint): \(reason) (\(hint))"
    }

    /// What to do about it, by the failure's kind.
    public var hint: String {
        let unix: Bool
        if case .unix = endpoint { unix = true } else { unix = false }
        switch (underlying as? IOError)?.errnoCode {
        case EADDRINUSE: return unix ? "is another process listening on it? give another path" : "is another process using it? port 0 picks a free port"
        case EADDRNOTAVAIL: return "the address is not one of this machine's: give one of its addresses, 0.0.0.0 for all, or 127.0.0.1"
        case EACCES: return unix ? "the directory must be writable by this user" : "ports below 1024 need privileges (CAP_NET_BIND_SERVICE): give a port from 1024 up"
        case ENOENT: return "the directory must exist"
        default: return unix ? "give a path in a directory this user can write" : "give an address of this machine, as in 127.0.0.1:PORT"
        }
    }

    /// The system's words for the failure ("Address already in use"), not NIO's
    /// `bind(descriptor:ptr:bytes:)` wrapping.
    public var reason: String {
        if let io = underlying as? IOError { return String(cString: strerror(io.errnoCode)) }
        if let unknown = underlying as? SocketAddressError.UnknownHost {
            return "the host name '\(unknown.host)' does not resolve (\(unknown.errorDescription))"
        }
        switch underlying as? SocketAddressError {
        case let .unknown(host, _): return "the host name '\(host)' does not resolve"
        case .unixDomainSocketPathTooLong: return "the path is too long for a Unix socket (at most 107 bytes)"
        default: return "\(underlying)"
        }
    }
}

extension Endpoint {
    /// The address a bound server channel listens on (its real port when 0 was asked).
    init(boundTo channel: any Channel) {
        if let address = channel.localAddress {
            if let path = address.pathname {
                self = .unix(path: path)
                return
            }
            if let ip = address.ipAddress, let port = address.port {
                self = .tcp(host: ip, port: port)
                return
            }
        }
        self = .tcp(host: "unknown", port: 0)
    }
}

/// A one-shot value many tasks can wait for: the listener's bound addresses.
final class BoundAddresses: Sendable {
    private enum State {
        case waiting([UInt64: CheckedContinuation<[Endpoint], any Error>], next: UInt64)
        case done(Result<[Endpoint], any Error>)
    }

    private let state = NIOLockedValueBox(State.waiting([:], next: 0))

    /// The addresses bound, nil until they are (or when binding failed).
    var now: [Endpoint]? {
        state.withLockedValue { s in
            guard case let .done(.success(addresses)) = s else { return nil }
            return addresses
        }
    }

    func succeed(_ addresses: [Endpoint]) { complete(.success(addresses)) }
    func fail(_ error: any Error) { complete(.failure(error)) }

    private func complete(_ result: Result<[Endpoint], any Error>) {
        let waiters = state.withLockedValue { s -> [CheckedContinuation<[Endpoint], any Error>] in
            guard case let .waiting(waiters, _) = s else { return [] }
            s = .done(result)
            return Array(waiters.values)
        }
        for w in waiters { w.resume(with: result) }
    }

    func wait() async throws -> [Endpoint] {
        let id = state.withLockedValue { s -> UInt64? in
            guard case let .waiting(waiters, next) = s else { return nil }
            s = .waiting(waiters, next: next + 1)
            return next
        }
        guard let id else { return try state.withLockedValue { s in
            guard case let .done(result) = s else { throw CancellationError() }
            return try result.get()
        } }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let immediate = state.withLockedValue { s -> Result<[Endpoint], any Error>? in
                    switch s {
                    case let .done(result): return result
                    case var .waiting(waiters, next):
                        if Task.isCancelled { return .failure(CancellationError()) }
                        waiters[id] = continuation
                        s = .waiting(waiters, next: next)
                        return nil
                    }
                }
                if let immediate { continuation.resume(with: immediate) }
            }
        } onCancel: {
            let waiter = state.withLockedValue { s -> CheckedContinuation<[Endpoint], any Error>? in
                guard case var .waiting(waiters, next) = s, let w = waiters.removeValue(forKey: id) else { return nil }
                s = .waiting(waiters, next: next)
                return w
            }
            waiter?.resume(throwing: CancellationError())
        }
    }
}
