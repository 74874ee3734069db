import Foundation
import Logging
import QSReads
import QSNet
import QSModel
import QSStore
import QSTesting

/// Both read servers in this process over `store`, on loopback port 0 and Unix
/// sockets, with an injected clock (so expiry can be judged at a recorded time).
final class InProcessReads: Sendable {
    let memcachedPort: Int
    /// The same memcached server on reader threads (`--memcached-threads`): tests compare both.
    let memcachedThreadedPort: Int
    let ktPort: Int
    /// The same KT HTTP server on reader threads (`--kt-http-threads`): tests compare both.
    let ktThreadedPort: Int
    let memcachedSocket: String
    let ktSocket: String
    private let running: InProcessServices

    init(store: Store, directory: URL, databases: KTDatabaseMap = .single,
         clock: @escaping ReadClock) async throws {
        memcachedSocket = directory.appendingPathComponent("mc.sock").path
        ktSocket = directory.appendingPathComponent("kt.sock").path
        var logger = Logger(label: "reads-test")
        logger.logLevel = .error
        let mc = MemcachedServer(store: store, endpoints: [.tcp(host: "127.0.0.1", port: 0), .unix(path: memcachedSocket)],
                                 logger: logger,
                                 // The transcripts were recorded from KT's plug-in with opts=f.
                                 configuration: .init(databases: databases, valueFormat: .init(flagsInValue: true), clock: clock))
        let threaded = MemcachedServer(store: store, endpoints: [.tcp(host: "127.0.0.1", port: 0)], logger: logger,
                                       configuration: .init(databases: databases, valueFormat: .init(flagsInValue: true),
                                                            clock: clock, threads: 2))
        let kt = KTHTTPReadServer(store: store, endpoints: [.tcp(host: "127.0.0.1", port: 0), .unix(path: ktSocket)],
                                  logger: logger, configuration: .init(databases: databases, clock: clock))
        var ktThreadsConfiguration = KTHTTPReadServer.Configuration(databases: databases, clock: clock)
        ktThreadsConfiguration.threads = 2
        let ktThreaded = KTHTTPReadServer(store: store, endpoints: [.tcp(host: "127.0.0.1", port: 0)], logger: logger,
                                          configuration: ktThreadsConfiguration)
        running = try await InProcessServices([mc, threaded, kt, ktThreaded], logger: logger)
        memcachedPort = try await mc.listener.port()
        memcachedThreadedPort = try await threaded.listener.port()
        ktPort = try await kt.listener.port()
        ktThreadedPort = try await ktThreaded.listener.port()
    }

    func stop() async {
        try? await running.stop()
    }
}
