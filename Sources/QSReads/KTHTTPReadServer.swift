import Foundation
import KTFormats
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import QSService
import QSStore
import ServiceLifecycle

/// KT's HTTP RPC read procedures and RESTful reads on TCP and Unix sockets (see
/// `KTProcedures` and `KTRESTRead`). Malformed HTTP gets 400 from NIO's HTTP error
/// handler; every bad request is counted and logged with its peer.
public struct KTHTTPReadServer: Service {
    public struct Configuration: Sendable {
        public var databases: KTDatabaseMap
        public var scanLimits: ScanLimits
        /// Largest request body accepted (KT's own limit is far larger; QS caps memory).
        public var maxBodyBytes: Int
        public var clock: ReadClock

        public init(databases: KTDatabaseMap = .single, scanLimits: ScanLimits = ScanLimits(),
                    maxBodyBytes: Int = 32 << 20, clock: @escaping ReadClock = { wallClockSeconds() }) {
            self.databases = databases
            self.scanLimits = scanLimits
            self.maxBodyBytes = maxBodyBytes
            self.clock = clock
        }
    }

    let listener: ConnectionListener<HTTPServerRequestPart, HTTPServerResponsePart>
    let session: KTHTTPSession

    public init(store: any ReadableStore, endpoints: [Endpoint], pool: NIOThreadPool, logger: Logger,
                configuration: Configuration = Configuration(),
                group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        listener = ConnectionListener(name: "KT HTTP", endpoints: endpoints, group: group, logger: logger) { channel in
            try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
            return try NIOAsyncChannel(wrappingChannelSynchronously: channel)
        }
        let metrics = ReadMetrics(interface: "kt_http")
        let procedures = KTProcedures(store: store, databases: configuration.databases, clock: configuration.clock,
                                      limits: configuration.scanLimits, started: Date(),
                                      connections: { metrics.active.count })
        session = KTHTTPSession(procedures: procedures,
                                rest: KTRESTRead(store: store, databases: configuration.databases, clock: configuration.clock),
                                pool: pool, metrics: metrics, logger: logger, maxBodyBytes: configuration.maxBodyBytes)
    }

    public func run() async throws {
        let session = self.session
        try await listener.run { connection, peer in
            await session.run(connection, peer: peer)
        }
    }
}
