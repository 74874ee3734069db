import NIOCore
import NIOPosix
import QSModel
import QSWire

/// A read-only subscription to a node's log feed: sends `Subscribe{fromIndex, hash}` and
/// hands each frame (`entries`, `heartbeat`) to its consumer as received, with its decoded
/// form. Pull-driven: while the consumer is busy nothing more is read.
public struct LogSubscription: Sendable {
    public let host: String
    public let port: Int
    /// A Unix-domain socket to connect to instead of `host`/`port`.
    public let unixPath: String?
    public let maxFrameBytes: Int
    /// With no frame (the node heartbeats every second) for this long, the connection is
    /// given up.
    public let readTimeout: TimeAmount
    /// With no frame for this long a subscription is given up (heartbeats come every second).
    public static let defaultReadTimeout: TimeAmount = .seconds(5)
    /// The node's replication token (its `--replication-token-file`); empty when it has none.
    public var token: [UInt8] = []
    let group: any EventLoopGroup

    public var name: String { unixPath.map { "qs://unix:\($0)" } ?? "qs://\(host):\(port)" }

    public init(host: String, port: Int, maxFrameBytes: Int = defaultMaxFrameBytes, readTimeout: TimeAmount = LogSubscription.defaultReadTimeout,
                group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        self.init(host: host, port: port, unixPath: nil, maxFrameBytes: maxFrameBytes, readTimeout: readTimeout, group: group)
    }

    public init(unixPath: String, maxFrameBytes: Int = defaultMaxFrameBytes, readTimeout: TimeAmount = LogSubscription.defaultReadTimeout,
                group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        self.init(host: "", port: 0, unixPath: unixPath, maxFrameBytes: maxFrameBytes, readTimeout: readTimeout, group: group)
    }

    private init(host: String, port: Int, unixPath: String?, maxFrameBytes: Int, readTimeout: TimeAmount, group: any EventLoopGroup) {
        self.host = host
        self.port = port
        self.unixPath = unixPath
        self.maxFrameBytes = maxFrameBytes
        self.readTimeout = readTimeout
        self.group = group
    }

    /// Why a subscription ended.
    public enum Failure: Error, CustomStringConvertible, Sendable, Equatable {
        /// The node refused the subscription or sent an error (`diverged`, `needs-bootstrap`, …).
        case refused(server: String, code: UInt16, message: String)
        case unexpected(server: String, String)
        case closed(server: String)

        public var description: String {
            switch self {
            case let .refused(s, code, message):
                return "\(s) refused the subscription (\(ErrorCode(rawValue: code).map { "\($0)" } ?? "code \(code)")): \(message)"
            case let .unexpected(s, what): return "\(s): unexpected frame on a subscription: \(what)"
            case let .closed(s): return "\(s) closed the subscription"
            }
        }
    }

    /// Streams the log after `index`, whose chained hash must be `hash` on the node too
    /// (32 zero bytes for index 0). Returns only when `frame` throws or the task is
    /// cancelled; the node closing is `Failure.closed`.
    public func stream(after index: UInt64, hash: [UInt8], _ frame: (Frame, Response) async throws -> Void) async throws {
        let channel = try await openFrameChannel(host: host, port: port, unixPath: unixPath, readTimeout: readTimeout,
                                                 maxFrameBytes: maxFrameBytes, group: group)
        let name = self.name
        try await channel.executeThenClose { inbound, outbound in
            try await outbound.write(Request.subscribe(fromIndex: index, hash: hash, token: token).frame())
            for try await received in inbound {
                let response = try Response.decode(received)
                switch response {
                case .entries, .heartbeat: try await frame(received, response)
                case let .error(code, message): throw Failure.refused(server: name, code: code, message: message)
                default: throw Failure.unexpected(server: name, "\(response)".prefix(100).description)
                }
            }
            throw Failure.closed(server: name)
        }
    }
}
