import Foundation
import Logging
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
    private var task: Task<Void, any Error>?

    init(store: Store, directory: URL, databases: KTDatabaseMap = .single,
         clock: @escaping ReadClock) throws {
        memcachedSocket = directory.appendingPathComponent("mc.sock").path
        ktSocket = directory.appendingPathComponent("kt.sock").path
        var logger = Logger(label: "reads-test")
        logger.logLevel = .error
        let mc = MemcachedServer(store: store, endpoints: [.tcp(host: "127.0.0.1", port: memcachedPort), .unix(path: memcachedSocket)],
                                 logger: logger,
                                 configuration: .init(databases: databases, clock: clock))
        let kt = KTHTTPReadServer(store: store, endpoints: [.tcp(host: "127.0.0.1", port: ktPort), .unix(path: ktSocket)],
                                  logger: logger, configuration: .init(databases: databases, clock: clock))
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
    }
}
