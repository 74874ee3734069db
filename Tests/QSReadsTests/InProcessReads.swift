import Foundation
import Logging
import NIOPosix
import QSReads
import QSNet
import QSModel
import QSStore
import QSTesting

/// Both read servers in this process over `store`, on free loopback ports and Unix
/// sockets, with an injected clock (so expiry can be judged at a recorded time).
final class InProcessReads: @unchecked Sendable {
    let memcachedPort = Harness.freePort()
    let ktPort = Harness.freePort()
    let memcachedSocket: String
    let ktSocket: String
    let pool = NIOThreadPool(numberOfThreads: 2)
    private var task: Task<Void, any Error>?

    init(store: any ReadableStore, directory: URL, databases: KTDatabaseMap = .single,
         clock: @escaping ReadClock) throws {
        memcachedSocket = directory.appendingPathComponent("mc.sock").path
        ktSocket = directory.appendingPathComponent("kt.sock").path
        pool.start()
        var logger = Logger(label: "reads-test")
        logger.logLevel = .error
        let mc = MemcachedServer(store: store, endpoints: [.tcp(host: "127.0.0.1", port: memcachedPort), .unix(path: memcachedSocket)],
                                 pool: pool, logger: logger,
                                 configuration: .init(databases: databases, clock: clock))
        let kt = KTHTTPReadServer(store: store, endpoints: [.tcp(host: "127.0.0.1", port: ktPort), .unix(path: ktSocket)],
                                  pool: pool, logger: logger, configuration: .init(databases: databases, clock: clock))
        task = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await mc.run() }
                group.addTask { try await kt.run() }
                try await group.waitForAll()
            }
        }
        guard Harness.waitUntil(timeout: .seconds(10), { Harness.isListening(port: memcachedPort) && Harness.isListening(port: ktPort) }) else {
            throw HarnessError("read servers did not start listening")
        }
    }

    func stop() async {
        task?.cancel()
        _ = try? await task?.value
        try? await pool.shutdownGracefully()
    }
}
