import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import QSBytes
import QSEtcd
import QSModel
import QSNet
import QSStore
import ServiceLifecycle

/// The keys a root cluster keeps in etcd, all under `/qs/NAME/` (docs/ha.md).
public struct ClusterKeys: Sendable {
    public let prefix: [UInt8]
    /// The cluster's name (`--cluster`).
    public let cluster: String

    public init(cluster: String) {
        self.cluster = cluster
        prefix = Array("/qs/\(cluster)/".utf8)
    }

    public var head: [UInt8] { prefix + Array("head".utf8) }
    public var logPrefix: [UInt8] { prefix + Array("log/".utf8) }
    public var checkpointPrefix: [UInt8] { prefix + Array("cp/".utf8) }
    public var appliedPrefix: [UInt8] { prefix + Array("applied/".utf8) }
    /// `claims/<nodeID>`: the process that holds a node id (a nonce and what it is), so a
    /// second process with the same id — a member's data directory copied — is told apart.
    public var claimPrefix: [UInt8] { prefix + Array("claims/".utf8) }
    /// `clock/<nodeID>`: the member's wall clock (ns since the epoch, u64) at its last
    /// `applied/` write: the purge judges expiry by the slowest live member's clock.
    public var clockPrefix: [UInt8] { prefix + Array("clock/".utf8) }
    /// The cluster's write role (`mirror`, `promoted`; absent: `open`), compared by every write.
    public var role: [UInt8] { prefix + Array("role".utf8) }
    /// A mirroring cluster's source root's freshest word (ns since the epoch, u64), put with
    /// the appends and a quiet mirror bridge's probes: every member's replicas judge the
    /// source by it, as a single mirror's do.
    public var sourceTime: [UInt8] { prefix + Array("source-time".utf8) }
    /// The roots compatible mirror bridges said they read, through any member (their hellos'
    /// `source=`), newline-separated, newest last, at most `Writers.seenLimit`: every
    /// member's status lists them, so `qsctl promote` through any member asks them.
    public var sourcesSeen: [UInt8] { prefix + Array("sources-seen".utf8) }

    /// `log/` and the index in 16 lower-case hex digits, so keys sort by index.
    public func log(_ index: UInt64) -> [UInt8] {
        let hex = String(index, radix: 16)
        return logPrefix + Array((String(repeating: "0", count: max(0, 16 - hex.count)) + hex).utf8)
    }

    public func checkpoint(_ sourceID: String) -> [UInt8] { checkpointPrefix + Array(sourceID.utf8) }
    public func applied(_ nodeID: String) -> [UInt8] { appliedPrefix + Array(nodeID.utf8) }
    public func claim(_ nodeID: String) -> [UInt8] { claimPrefix + Array(nodeID.utf8) }
    public func clock(_ nodeID: String) -> [UInt8] { clockPrefix + Array(nodeID.utf8) }

    /// The index of a `log/` key, nil for any other key.
    func logIndex(_ key: [UInt8]) -> UInt64? {
        guard key.count == logPrefix.count + 16, key.starts(with: logPrefix) else { return nil }
        return UInt64(String(decoding: key[logPrefix.count...], as: UTF8.self), radix: 16)
    }

    /// The source id of a `cp/` key, nil for any other key.
    func sourceID(_ key: [UInt8]) -> String? {
        guard key.count > checkpointPrefix.count, key.starts(with: checkpointPrefix) else { return nil }
        return String(decoding: key[checkpointPrefix.count...], as: UTF8.self)
    }

    /// A stored log value (`hash(32) ‖ entry bytes`) as an entry.
    func entry(index: UInt64, value: [UInt8]) throws -> StoredEntry {
        guard value.count > 32 else { throw ClusterError.corrupt("log entry \(index) in etcd is \(value.count) bytes, shorter than its hash") }
        return StoredEntry(index: index, hash: Array(value[..<32]), bytes: Array(value[32...]))
    }

    /// The compare that `head` still holds `base` (is absent when `base` is the empty log).
    func headIs(_ base: Head) -> EtcdCompare {
        base.index == 0 ? .absent(key: head) : .value(key: head, equals: base.encoded())
    }

    static func u64(_ bytes: [UInt8], _ what: String) throws -> UInt64 {
        guard bytes.count == 8 else { throw ClusterError.corrupt("\(what) in etcd is \(bytes.count) bytes, expected 8") }
        return bytes.reduce(0) { $0 << 8 | UInt64($1) }
    }

    static func u64Bytes(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (56 - 8 * $0)) } }

    static func role(_ bytes: [UInt8]) throws -> WriteRole {
        guard let role = WriteRole(rawValue: String(decoding: bytes, as: UTF8.self)) else {
            throw ClusterError.corrupt("the write role in etcd is '\(String(decoding: bytes, as: UTF8.self))', not open, mirror or promoted")
        }
        return role
    }

    static func head(_ bytes: [UInt8]) throws -> Head {
        var r = ByteReader(bytes)
        do {
            return Head(index: try r.readU64(), hash: try r.readBytes(32), commitTimeNs: try r.readU64())
        } catch {
            throw ClusterError.corrupt("the head in etcd does not decode: \(error)")
        }
    }
}

/// Why a member cannot commit or apply.
public enum ClusterError: Error, Sendable, CustomStringConvertible {
    case corrupt(String)
    /// This member's store holds another history than the cluster's log.
    case diverged(String)
    /// This member is behind the log etcd retains: it must catch up from a snapshot.
    case behind(String)
    /// Committed in etcd, but this member has not applied it in time.
    case notApplied(String)
    /// A log entry larger than etcd takes in one request: sending it again cannot help.
    case tooLarge(String)

    public var description: String {
        switch self {
        case let .corrupt(m): return "corrupt cluster state: \(m)"
        case let .diverged(m): return "diverged: \(m)"
        case let .behind(m): return "behind the cluster's retained log: \(m)"
        case let .notApplied(m): return m
        case let .tooLarge(m): return m
        }
    }
}
