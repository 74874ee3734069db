import Logging
import NIOCore
import NIOPosix
import QSNet
import QSModel
import QSStore
import ServiceLifecycle

/// The memcached text protocol, read-only, on TCP and Unix sockets: `get`, `gets`,
/// `version`, `stats`, `quit`; writes are refused with `SERVER_ERROR read-only: …` (their
/// data block is consumed so the connection stays in sync). Keys are read from one KT
/// database of the map (database 0 unless told otherwise), as KT's plug-in did.
public struct MemcachedServer: ListeningService {
    public struct Configuration: Sendable {
        public var databases: KTDatabaseMap
        /// The KT database the plug-in served (its `dbidx`).
        public var database: Int
        public var valueFormat: MemcachedValueFormat
        public var limits: MemcachedLimits
        /// What `version` answers. KT's plug-in answered `KyotoTycoon/0.9.56b`; clients that
        /// look at it keep seeing the same.
        public var version: String
        public var clock: ReadClock

        public init(databases: KTDatabaseMap = .single, database: Int = 0,
                    valueFormat: MemcachedValueFormat = MemcachedValueFormat(),
                    limits: MemcachedLimits = MemcachedLimits(), version: String = "KyotoTycoon/0.9.56b",
                    clock: @escaping ReadClock = { wallClockSeconds() }) {
            self.databases = databases
            self.database = database
            self.valueFormat = valueFormat
            self.limits = limits
            self.version = version
            self.clock = clock
        }
    }

    public let listener: Listener
    let session: MemcachedSession
    let limits: MemcachedLimits

    public init(store: Store, endpoints: [Endpoint], logger: Logger,
                configuration: Configuration = Configuration(),
                group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        limits = configuration.limits
        listener = Listener(name: "memcached", endpoints: endpoints, drain: .requests, group: group, logger: logger)
        session = MemcachedSession(config: configuration, store: store,
                                   metrics: ReadMetrics(interface: "memcached"), logger: logger, stats: MemcachedStats())
    }

    public func run() async throws {
        let session = self.session, limits = self.limits
        try await listener.run { channel in
            let decoder = MemcachedDecoder(limits: limits)
            try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(decoder, maximumBufferSize: decoder.maximumBufferSize))
            return try NIOAsyncChannel<MemcachedCommand, ByteBuffer>(wrappingChannelSynchronously: channel)
        } handle: { accepted in
            await session.run(accepted.connection, peer: accepted.peer, drain: accepted.drain)
        }
    }
}
