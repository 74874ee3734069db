import Foundation
import Logging
import QSNet
import ServiceLifecycle
import UnixSignals

/// Re-reads a replica's upstream list from its file on SIGHUP, so a data center can be
/// moved under another root (and back) without restarting its replicas.
public struct UpstreamReloader: Service {
    let path: String
    let replica: ReplicaService
    let logger: Logger

    public init(path: String, replica: ReplicaService, logger: Logger) {
        self.path = path
        self.replica = replica
        self.logger = logger
    }

    /// Parses a list of `HOST:PORT` separated by commas, spaces or new lines (`#` starts
    /// a comment).
    public static func parse(_ text: String) throws -> [Endpoint] {
        try Endpoint.parseList(text, what: "upstream list")
    }

    public static func read(_ path: String) throws -> [Endpoint] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError("cannot read the upstream file \(path)")
        }
        return try parse(String(decoding: data, as: UTF8.self))
    }

    public func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        try await cancelWhenGracefulShutdown {
            for await _ in signals {
                do {
                    replica.setUpstreams(try Self.read(path))
                } catch {
                    logger.error("SIGHUP: upstream list not changed", metadata: ["file": "\(path)", "error": "\(error)"])
                }
            }
        }
    }
}
