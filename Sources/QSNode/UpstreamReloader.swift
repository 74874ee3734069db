import Foundation
import Logging
import QSNet

/// A replica's `--upstream-file`: re-read on SIGHUP (`reload()`), and rewritten (atomically)
/// when the list is changed through the admin port (`apply(_:)`), so a data center can be
/// moved under another root (and back) without restarting its replicas, and a move
/// survives a restart.
public struct UpstreamReloader: Sendable {
    /// The file, or "" when the replica has none (then `apply` changes the list in memory only).
    let path: String
    let replica: ReplicaService
    let logger: Logger
    /// This node's own addresses (its write listener's, as bound: `--listen`, `--unix`):
    /// refused in a new list, as at start.
    let own: @Sendable () -> [Endpoint]

    public init(path: String, replica: ReplicaService, own: @escaping @Sendable () -> [Endpoint] = { [] }, logger: Logger) {
        self.path = path
        self.replica = replica
        self.own = own
        self.logger = logger
    }

    /// A list naming this node itself is refused: it would subscribe to its own log and say
    /// "subscribed, behind 0 entries" until its root word went stale.
    func checked(_ list: [Endpoint]) throws -> [Endpoint] {
        let mine = own()
        if let me = list.first(where: { up in mine.contains(up) || mine.contains { HostAddress.namesByLoopback(up, own: $0) } }) {
            throw ConfigError("upstream \(me) is this replica's own address (--listen / --unix): give the address of the node it follows")
        }
        return list
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

    /// Re-reads the file (SIGHUP); a file that does not parse leaves the list as it was.
    public func reload() {
        do {
            replica.setUpstreams(try checked(Self.read(path)))
        } catch {
            logger.error("SIGHUP: upstream list not changed", metadata: ["file": "\(path)", "error": "\(error)"])
        }
    }

    /// Replaces the list with `text` (as --upstream, or one per line), writing it through
    /// to the file first when there is one, so the file and the running list agree.
    @discardableResult
    public func apply(_ text: String) throws -> [Endpoint] {
        let list = try checked(Self.parse(text))
        if !path.isEmpty {
            let body = "# written by POST /upstream\n" + list.map(\.description).joined(separator: "\n") + "\n"
            do {
                try Data(body.utf8).write(to: URL(fileURLWithPath: path), options: .atomic)
            } catch {
                throw ConfigError("cannot write the upstream file \(path): \(error); the list was not changed")
            }
        }
        replica.setUpstreams(list)
        return list
    }
}
