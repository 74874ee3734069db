import KTFormats
import Logging
import Metrics
import QSFeed
import QSModel

/// What to do with a KT update the bridge cannot carry.
public enum KTPolicy: String, Sendable, CaseIterable {
    /// Stop the bridge with a clear message (the default: nothing is silently dropped).
    case stop
    /// Count it (`qs_bridge_*_total`), log it, and move past its position.
    case count
}

/// How KT updates become QS operations: which KT database goes to which key prefix, and
/// what to do with updates that cannot be carried.
public struct KTMapping: Sendable {
    /// KT database index → key prefix in QS.
    public var prefixes: [UInt16: [UInt8]]
    public var onUnmapped: KTPolicy
    public var onUndecodable: KTPolicy
    public var allowClear: Bool

    public init(prefixes: [UInt16: [UInt8]] = [0: []], onUnmapped: KTPolicy = .stop,
                onUndecodable: KTPolicy = .stop, allowClear: Bool = false) {
        self.prefixes = prefixes
        self.onUnmapped = onUnmapped
        self.onUndecodable = onUndecodable
        self.allowClear = allowClear
    }

    /// With clears allowed, no database's prefix may contain another's: a KT clear of one
    /// database must not wipe another's keys. Returns the problem, nil when there is none.
    public func clearConflict() -> String? {
        guard allowClear else { return nil }
        for (a, pa) in prefixes {
            for (b, pb) in prefixes where a != b && pb.starts(with: pa) {
                let show = { (p: [UInt8]) in "'\(String(decoding: p, as: UTF8.self))'" }
                return "--allow-clear with --db-map: a KT clear of database \(a) (prefix \(show(pa))) would also delete database \(b)'s keys (prefix \(show(pb))); give the databases prefixes that do not contain each other, e.g. 0=main/,1=aux/"
            }
        }
        return nil
    }

    /// Parses `0=,1=aux/` (index=prefix, comma separated; the prefix may be empty).
    public static func parseDBMap(_ text: String) throws -> [UInt16: [UInt8]] {
        var out = [UInt16: [UInt8]]()
        for part in text.split(separator: ",", omittingEmptySubsequences: true) {
            guard let eq = part.firstIndex(of: "="), let index = UInt16(part[..<eq].trimmingCharacters(in: .whitespaces)) else {
                throw FeedError.stop("--db-map entry '\(part)' is not INDEX=PREFIX (for example 0=,1=aux/)")
            }
            guard out[index] == nil else { throw FeedError.stop("--db-map maps database \(index) twice") }
            let prefix = part[part.index(after: eq)...]
            // A space or a second '=' is a list written with the wrong separator (`0= 1=aux/`),
            // which would otherwise put every key of database 0 under " 1=aux/".
            guard !prefix.unicodeScalars.contains(where: { $0 == "=" || $0.properties.isWhitespace || $0.value < 0x20 || $0.value == 0x7F }) else {
                throw FeedError.stop("--db-map entry '\(part)': a prefix holds no '=', space or control character; entries are separated by commas (for example 0=,1=aux/)")
            }
            // Two databases under one prefix would merge their keys: one overwrites the other's.
            if let other = out.first(where: { $0.value == Array(prefix.utf8) })?.key {
                throw FeedError.stop("--db-map maps databases \(other) and \(index) to the same prefix '\(prefix)': their keys would overwrite each other; give each its own")
            }
            out[index] = Array(prefix.utf8)
        }
        guard !out.isEmpty else { throw FeedError.stop("--db-map maps no database: give at least one INDEX=PREFIX") }
        return out
    }
}

/// Counters of what the KT side met.
public struct KTMetrics: Sendable {
    public let unmapped = Counter(label: "qs_bridge_unmapped_updates_total")
    public let undecodable = Counter(label: "qs_bridge_undecodable_updates_total")
    public let clears = Counter(label: "qs_bridge_kt_clears_total")
    public let skippedBySID = Counter(label: "qs_bridge_kt_sid_skipped_frames_total")
    public let corruptFrames = Counter(label: "qs_bridge_corrupt_frames_total")
    public let logReads = Counter(label: "qs_bridge_kt_log_reads_total")
    public let logReadFailures = Counter(label: "qs_bridge_kt_log_read_failures_total")

    public init() {}
}

/// Turns KT update frames into feed changes under a mapping.
public struct KTTranslator: Sendable {
    public let mapping: KTMapping
    public let metrics: KTMetrics
    let logger: Logger
    /// Database 0's prefix (nil: unmapped), looked up once: nearly every update is for it.
    private let prefix0: [UInt8]?

    public init(mapping: KTMapping, metrics: KTMetrics = KTMetrics(), logger: Logger) {
        self.mapping = mapping
        self.metrics = metrics
        self.logger = logger
        prefix0 = mapping.prefixes[0]
    }

    /// The wall time a KT timestamp stands for (milliseconds × 10⁶ plus a counter).
    public static func wallTimeNs(_ ts: UInt64) -> UInt64 {
        KTClock.wallTimeNs(of: ts)
    }

    /// The wall time of KT's state a heartbeat vouches for, which the bridge's lag is
    /// measured from. KT sends a heartbeat when it has nothing newer to send, stamped one
    /// second behind its clock (never behind the last update sent): taken as is, an idle
    /// bridge would show a lag of a second or more while a busy one shows its batch delay.
    /// So the second is added back, and the result is never later than `now` (its arrival:
    /// KT had nothing newer then). Lag then means the same at idle and under load: how
    /// long ago, by KT's clock, the newest KT state the root holds was current.
    /// Only the lag and the root's freshness use it; the checkpoint keeps the stamp itself.
    public static func heartbeatWallTimeNs(_ ts: UInt64, now: UInt64 = wallClockNanoseconds()) -> UInt64 {
        min(wallTimeNs(ts) &+ 1_000_000_000, now)
    }

    /// One update frame → one change at its timestamp. Throws `FeedError.stop` where the
    /// mapping says to stop. The message is taken: a set's value keeps its storage
    /// (`KTUpdateMessage(taking:)`).
    public func change(timestamp ts: UInt64, message: consuming [UInt8]) throws -> FeedChange {
        let time = Self.wallTimeNs(ts)
        if message.isEmpty {
            // A position without a change: KT skipped updates whose origin sid is ours.
            return FeedChange(position: ts, operations: [], sourceTimeNs: time)
        }
        let decoded: KTUpdateMessage
        do {
            decoded = try KTUpdateMessage(taking: message)
        } catch {
            metrics.undecodable.increment()
            let why = "undecodable KT update at timestamp \(ts): \(error)"
            guard mapping.onUndecodable == .count else {
                throw FeedError.stop(why + " (run with --on-undecodable count to count and skip such updates)")
            }
            logger.error("skipping undecodable update", metadata: ["ts": "\(ts)", "error": "\(error)"])
            return FeedChange(position: ts, operations: [], sourceTimeNs: time)
        }
        guard let prefix = decoded.db == 0 ? prefix0 : mapping.prefixes[decoded.db] else {
            metrics.unmapped.increment()
            guard mapping.onUnmapped == .count else {
                throw FeedError.stop("KT update at timestamp \(ts) is for database \(decoded.db), which --db-map does not map (add \(decoded.db)=PREFIX to --db-map, or run with --on-unmapped count)")
            }
            logger.warning("skipping update for unmapped database", metadata: ["ts": "\(ts)", "db": "\(decoded.db)"])
            return FeedChange(position: ts, operations: [], sourceTimeNs: time)
        }
        switch decoded.operation {
        case let .set(key, value, expiration):
            let xt: UInt64? = expiration >= KTExpiration.never ? nil : UInt64(max(0, expiration))
            return FeedChange(position: ts, operation: .set(key: prefixed(prefix, key), value: value, expiry: xt), sourceTimeNs: time)
        case let .remove(key):
            return FeedChange(position: ts, operation: .delete(key: prefixed(prefix, key)), sourceTimeNs: time)
        case .clear:
            metrics.clears.increment()
            guard mapping.allowClear else {
                throw FeedError.stop("KT cleared database \(decoded.db) at timestamp \(ts): refusing to wipe the keyspace under prefix '\(String(decoding: prefix, as: UTF8.self))' (run with --allow-clear to apply clears)")
            }
            logger.warning("applying KT clear", metadata: ["ts": "\(ts)", "db": "\(decoded.db)"])
            return FeedChange(position: ts, operation: .clearPrefix(prefix), sourceTimeNs: time)
        }
    }
}

/// `prefix + key`, without a new array when the prefix is empty (database 0's usual map).
@inline(__always)
private func prefixed(_ prefix: [UInt8], _ key: [UInt8]) -> [UInt8] {
    prefix.isEmpty ? key : prefix + key
}
