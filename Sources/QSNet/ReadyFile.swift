import Foundation
import Logging
import ServiceLifecycle

/// A service that serves on a `Listener`.
public protocol ListeningService: Service {
    var listener: Listener { get }
}

/// Tells the outside world that a daemon is up: once every listener has bound, writes
/// `--ready-file` atomically (a temporary file renamed into place) as JSON,
/// `{"listeners":[{"name":"write","address":"127.0.0.1:40123"},…]}`, one entry per bound
/// endpoint with its real port, then waits for shutdown and removes the file. Tests start
/// daemons on port 0 and read the file instead of guessing free ports.
public struct ReadyFile: Service {
    public struct Entry: Codable, Sendable, Equatable {
        public var name: String
        public var address: String

        public init(name: String, address: String) {
            self.name = name
            self.address = address
        }
    }

    struct Contents: Codable {
        var listeners: [Entry]
    }

    let path: String
    let listeners: [Listener]
    let logger: Logger
    let onReady: @Sendable ([Entry]) throws -> Void

    /// `onReady` runs once every listener is bound, just before the file is written (fakekt writes its pid file there, so a reader of the ready file finds it).
    public init(path: String, listeners: [Listener], logger: Logger, onReady: @escaping @Sendable ([Entry]) throws -> Void = { _ in }) {
        self.path = path
        self.listeners = listeners
        self.logger = logger
        self.onReady = onReady
    }

    public func run() async throws {
        let entries: [Entry]
        do {
            entries = try await cancelWhenGracefulShutdown {
                var out = [Entry]()
                for listener in listeners {
                    for address in try await listener.addresses {
                        out.append(Entry(name: listener.name, address: address.description))
                    }
                }
                return out
            }
        } catch is CancellationError {
            return // stopped before every listener was up: nothing to announce
        }
        // What is done on ready (a pid file) is done before the ready file says so.
        try onReady(entries)
        if !path.isEmpty {
            try Self.write(entries, to: path)
            logger.info("ready file written", metadata: ["path": "\(path)", "listeners": "\(entries.count)"])
        }
        try? await gracefulShutdown()
        if !path.isEmpty { try? FileManager.default.removeItem(atPath: path) }
    }

    /// Writes `entries` to `path` through a temporary file in the same directory, renamed
    /// into place: a reader sees no file or the whole file, never part of it.
    public static func write(_ entries: [Entry], to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data = try encoder.encode(Contents(listeners: entries))
        let url = URL(fileURLWithPath: path)
        let temp = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).\(getpid()).tmp")
        do {
            try data.write(to: temp)
            guard rename(temp.path, url.path) == 0 else {
                throw ConfigError("cannot rename \(temp.path) to \(path): \(String(cString: strerror(errno)))")
            }
        } catch {
            try? FileManager.default.removeItem(at: temp)
            throw ConfigError("--ready-file \(path) cannot be written: \(fileErrorText(error)); check that its directory exists and is writable")
        }
    }

    /// Reads a ready file as `write` wrote it.
    public static func read(_ path: String) throws -> [Entry] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        return try JSONDecoder().decode(Contents.self, from: data).listeners
    }
}
