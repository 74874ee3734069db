import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// Where to listen or connect: `HOST:PORT` (`[v6]:PORT` for IPv6) or `unix:PATH`.
public enum Endpoint: Sendable, Equatable, CustomStringConvertible {
    case tcp(host: String, port: Int)
    case unix(path: String)

    /// Parses `HOST:PORT`, `[::1]:PORT`, `:PORT` (loopback) or `unix:PATH`.
    public init(parsing text: String, defaultHost: String = "127.0.0.1") throws {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            guard !path.isEmpty else { throw ConfigError("'\(text)': unix: needs a socket path, as in unix:/run/qs.sock") }
            self = .unix(path: path)
            return
        }
        guard let colon = text.lastIndex(of: ":") else {
            throw ConfigError("'\(text)' is not HOST:PORT (for example 127.0.0.1:7400) or unix:PATH")
        }
        var host = String(text[..<colon])
        // `qs://HOST:PORT` (qsqsbridge's --source) or `kt://…` given where an address is:
        // the host would be "qs://HOST", failing its name lookup for ever.
        if let scheme = host.range(of: "://") {
            throw ConfigError("'\(text)': an address takes no scheme ('\(host[..<scheme.upperBound])'): give HOST:PORT, as in \(String(host[scheme.upperBound...])):\(text[text.index(after: colon)...])")
        }
        // A list where one address goes (`qs://A,B`): the host would be "A,B's host".
        if host.contains(",") {
            throw ConfigError("'\(text)' names several addresses (a comma): this takes one HOST:PORT")
        }
        let portText = text[text.index(after: colon)...]
        guard let port = Int(portText), (0...65535).contains(port) else {
            throw ConfigError("'\(text)': port '\(portText)' is not a number from 0 to 65535")
        }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        // Digits and dots only is meant as an IPv4 address, never a name: 999.1.1.1 would
        // otherwise be looked up as a host name, failing later with a less direct error.
        var v4 = in_addr()
        if !host.isEmpty, host.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }), inet_aton(host, &v4) == 0 {
            throw ConfigError("'\(text)': '\(host)' is not an IPv4 address (four numbers from 0 to 255, as in 10.0.0.1)")
        }
        if host.isEmpty { host = defaultHost }
        self = .tcp(host: host, port: port)
    }

    /// Parses a list of addresses separated by commas, spaces or new lines (`#` starts a
    /// comment to the end of its line), in order of preference; an empty list is refused.
    public static func parseList(_ text: String, what: String = "address list") throws -> [Endpoint] {
        let cleaned = text.split(separator: "\n").map { $0.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? "" }
            .joined(separator: ",")
        let parts = cleaned.split(whereSeparator: { $0 == "," || $0 == " " || $0 == "\t" }).map(String.init).filter { !$0.isEmpty }
        guard !parts.isEmpty else { throw ConfigError("the \(what) is empty") }
        return try parts.map { try Endpoint(parsing: $0) }
    }

    public var description: String {
        switch self {
        case let .tcp(host, port): return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case let .unix(path): return "unix:\(path)"
        }
    }

    /// True for loopback addresses and Unix sockets.
    public var isLocalOnly: Bool {
        switch self {
        case .unix: return true
        case let .tcp(host, _):
            return host == "localhost" || host == "::1" || host.hasPrefix("127.")
        }
    }
}

extension SocketAddress {
    /// A printable peer for log lines.
    public var peerDescription: String {
        if let ip = ipAddress, let port { return "\(ip):\(port)" }
        if let path = pathname { return "unix:\(path)" }
        return "\(self)"
    }

    /// Whether the peer is on this machine: a Unix socket or a loopback address.
    public var isLocal: Bool {
        if pathname != nil { return true }
        guard let ip = ipAddress else { return false }
        return ip.hasPrefix("127.") || ip == "::1" || ip.hasPrefix("::ffff:127.")
    }
}

extension Endpoint {
    /// The TCP port; nil for a Unix socket.
    public var port: Int? {
        if case let .tcp(_, port) = self { return port }
        return nil
    }
}
