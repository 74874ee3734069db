import Foundation
import Metrics
import NIOConcurrencyHelpers
import NIOCore

/// What one listener lets a connection do: how long it may stay idle (sending nothing,
/// or taking none of the bytes sent to it), how many connections it holds at once and how
/// many of them one peer may hold. Past a cap a new connection is closed as soon as it is
/// accepted and counted (`qs_connections_refused_total`, by listener and reason).
public struct ConnectionLimits: Sendable, Equatable {
    /// Closes a connection that sends nothing for this long, a connection that never sends
    /// a whole request included, and one that takes none of the bytes written to it for
    /// this long (`WriteTimeout`). Zero turns both off.
    public var idleTimeout: TimeAmount
    /// Connections this listener holds at once (every endpoint together).
    public var maxConnections: Int
    /// Connections one peer (one IP address; Unix-socket peers are not told apart) holds at once.
    public var maxPerPeer: Int

    public init(idleTimeout: TimeAmount = .seconds(60), maxConnections: Int = 10_000, maxPerPeer: Int = 1_000) {
        self.idleTimeout = idleTimeout
        self.maxConnections = maxConnections
        self.maxPerPeer = maxPerPeer
    }

    /// No idle timeout and no caps but the process's file-descriptor reserve (tests' in-process servers).
    public static let unlimited = ConnectionLimits(idleTimeout: .zero, maxConnections: .max, maxPerPeer: .max)
}

/// Why an open connection was closed by its listener (the `reason` label of
/// `qs_connections_closed_total`).
enum CloseReason: String, CaseIterable {
    /// Nothing received for the idle timeout.
    case idleTimeout = "idle-timeout"
    /// A request not whole and answered within the idle timeout of its first byte (a trickling peer).
    case requestTimeout = "request-timeout"
    /// None of the bytes sent taken for the idle timeout (a peer that stopped reading).
    case writeTimeout = "write-timeout"
}

/// Why a connection was refused (the `reason` label of `qs_connections_refused_total`).
enum RefusalReason: String, CaseIterable {
    case maxConnections = "max-connections"
    case perPeer = "per-peer"
    /// Accepting it would eat into the file descriptors the process keeps for its own work.
    case fileDescriptors = "file-descriptors"
}

/// The file descriptors of the process that connections may take: the soft
/// `RLIMIT_NOFILE` less a reserve the daemon keeps for its own work (store files,
/// snapshots, upstream and root connections, log files), whatever the peers do.
public enum FileDescriptorBudget {
    /// Descriptors kept out of every listener's reach: a tenth of the limit, at least 128.
    public static func reserve(limit: Int) -> Int { max(128, limit / 10) }

    /// The soft limit on open files of this process.
    public static var limit: Int {
        var rl = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &rl) == 0 else { return 1024 }
        return rl.rlim_cur == rlim_t.max ? Int.max / 2 : Int(clamping: rl.rlim_cur)
    }

    /// Connections all listeners of the process may hold together.
    public static var connections: Int {
        let l = limit
        return max(l - reserve(limit: l), 16)
    }

    /// Open connections across every listener of the process.
    static let open = NIOLockedValueBox(0)
}

/// Counts one listener's open connections, per peer, and admits or refuses a new one.
final class ConnectionCounter: Sendable {
    let limits: ConnectionLimits
    let processCap: Int
    private let state = NIOLockedValueBox((total: 0, perPeer: [String: Int]()))
    let open: Gauge
    private let refused: [RefusalReason: Counter]
    private let closes: [CloseReason: Counter]

    init(listener: String, limits: ConnectionLimits, processCap: Int = FileDescriptorBudget.connections) {
        self.limits = limits
        self.processCap = processCap
        open = Gauge(label: "qs_connections_open", dimensions: [("listener", listener)])
        refused = Dictionary(uniqueKeysWithValues: RefusalReason.allCases.map {
            ($0, Counter(label: "qs_connections_refused_total", dimensions: [("listener", listener), ("reason", $0.rawValue)]))
        })
        closes = Dictionary(uniqueKeysWithValues: CloseReason.allCases.map {
            ($0, Counter(label: "qs_connections_closed_total", dimensions: [("listener", listener), ("reason", $0.rawValue)]))
        })
        open.record(0)
    }

    /// Counts a connection the listener closed for `reason`.
    func closed(_ reason: CloseReason) {
        closes[reason]?.increment()
    }

    /// Takes a place for a connection from `peer` (nil: not told apart), or says why not
    /// (and counts the refusal). A place taken is given back with `release`.
    func admit(peer: String?) -> RefusalReason? {
        let refusal: RefusalReason? = state.withLockedValue { s in
            if s.total >= limits.maxConnections { return .maxConnections }
            if let peer, s.perPeer[peer, default: 0] >= limits.maxPerPeer { return .perPeer }
            let taken = FileDescriptorBudget.open.withLockedValue { n -> Bool in
                guard n < processCap else { return false }
                n += 1
                return true
            }
            guard taken else { return .fileDescriptors }
            s.total += 1
            if let peer { s.perPeer[peer, default: 0] += 1 }
            open.record(s.total)
            return nil
        }
        if let refusal { refused[refusal]?.increment() }
        return refusal
    }

    func release(peer: String?) {
        state.withLockedValue { s in
            s.total -= 1
            if let peer {
                let n = s.perPeer[peer, default: 1] - 1
                s.perPeer[peer] = n > 0 ? n : nil
            }
            open.record(s.total)
        }
        FileDescriptorBudget.open.withLockedValue { $0 -= 1 }
    }
}
