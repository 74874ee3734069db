import NIOConcurrencyHelpers
import QSClient
import QSModel

/// The writers connected to a node that introduced themselves with `hello` (bridges):
/// who they are, since when, and when they last spoke (a bridge sends a keepalive every
/// second when it has nothing to write). What `status` reports, and how a compatible
/// mirror knows whether it is being followed.
public final class Writers: Sendable {
    public struct Writer: Sendable {
        public var peer: String
        public var client: String
        public var sinceNs: UInt64
        public var lastRequestNs: UInt64
        public var lastAppendNs: UInt64?

        /// A `qsqsbridge --mode compatible` (its hello says so).
        public var compatible: Bool { client.contains("mode=compatible") }
        /// The root it reads, as its hello names it (`source=qs://HOST:PORT`): `qs://HOST:PORT`.
        public var source: String? { NodeStatus.sourceAddress(ofClient: client) }
    }

    private let table = NIOLockedValueBox<[String: Writer]>([:])
    /// How many sources seen a node keeps (`StoreTransaction.mirrorSourcesSeen`, a
    /// cluster's `ClusterKeys.sourcesSeen`), newest last.
    static let seenLimit = 32
    /// The last compatible append any writer made (ns since the epoch), 0 if none.
    private let lastAppend = NIOLockedValueBox<UInt64>(0)

    public init() {}

    /// A writer's hello.
    func hello(peer: String, client: String) {
        let now = wallClockNanoseconds()
        table.withLockedValue { $0[peer] = Writer(peer: peer, client: client, sinceNs: now, lastRequestNs: now) }
    }

    /// The root a compatible bridge's hello (`client`) names as its source
    /// (`source=qs://HOST:PORT`, a valid address), nil for any other writer.
    static func compatibleSource(ofClient client: String) -> String? {
        guard client.contains("mode=compatible"), let source = NodeStatus.sourceAddress(ofClient: client),
              NodeStatus.isSourceAddress(source) else { return nil }
        return source
    }

    /// The root a hello asks this node to record as one it follows: a compatible bridge's
    /// source, or the root a cut-over handed this node's writes to (`qsctl cutover`'s hello
    /// to the demoted root, `handed-to=qs://HOST:PORT`), nil for any other writer.
    static func recordedSource(ofClient client: String) -> String? {
        if let source = compatibleSource(ofClient: client) { return source }
        guard let to = client.split(separator: " ").first(where: { $0.hasPrefix("handed-to=qs://") }).map({ String($0.dropFirst("handed-to=".count)) }),
              NodeStatus.isSourceAddress(to) else { return nil }
        return to
    }

    /// `list` with `source` moved or added last, at most `seenLimit` long.
    static func adding(_ source: String, to list: [String]) -> [String] {
        var out = list.filter { $0 != source }
        out.append(source)
        return Array(out.suffix(seenLimit))
    }

    /// A list of sources seen as etcd keeps it: newline-separated (a source is a valid
    /// `qs://HOST:PORT`: no newline).
    static func encodeSeen(_ list: [String]) -> [UInt8] { Array(list.joined(separator: "\n").utf8) }
    static func decodeSeen(_ bytes: [UInt8]) -> [String] {
        String(decoding: bytes, as: UTF8.self).split(separator: "\n").map(String.init)
    }

    /// A request from `peer`: refreshes its last word if it said hello.
    func touch(peer: String, append: Bool = false) {
        let now = wallClockNanoseconds()
        if append { lastAppend.withLockedValue { $0 = now } }
        table.withLockedValue {
            $0[peer]?.lastRequestNs = now
            if append { $0[peer]?.lastAppendNs = now }
        }
    }

    func gone(peer: String) {
        _ = table.withLockedValue { $0.removeValue(forKey: peer) }
    }

    public var list: [Writer] { table.withLockedValue { Array($0.values) }.sorted { $0.sinceNs < $1.sinceNs } }
    public var lastAppendNs: UInt64 { lastAppend.withLockedValue { $0 } }

    /// A writer is live while it spoke within this many seconds (keepalives come every second).
    public static let liveSeconds = 5.0

    /// The status of the node as a compatible mirror: which bridge follows which root,
    /// whether it is live, and how old the last append is. A mirror cannot know more:
    /// the root it follows is what its bridge announced, and an idle source root and a
    /// dead one look alike from here (the bridge's own `/readyz` tells them apart).
    func mirrorStatus(nowNs: UInt64) -> [String: Any] {
        let live = list.filter { $0.compatible && age($0.lastRequestNs, nowNs) <= Self.liveSeconds }
        var out: [String: Any] = ["following": !live.isEmpty, "followed_by": live.map { ["peer": $0.peer, "client": $0.client] }]
        let last = lastAppendNs
        if last > 0 { out["last_append_age_seconds"] = age(last, nowNs) }
        return out
    }

    /// The source ids the connected writers introduced themselves with (`source-id=` in
    /// their hello's client string).
    var sourceIDs: Set<String> {
        Set(list.compactMap { w in
            w.client.split(separator: " ").first { $0.hasPrefix("source-id=") }.map { String($0.dropFirst("source-id=".count)) }
        })
    }

    func json(nowNs: UInt64) -> [[String: Any]] {
        list.map { w in
            var o: [String: Any] = ["peer": w.peer, "client": w.client, "connected_seconds": age(w.sinceNs, nowNs),
                                    "last_request_age_seconds": age(w.lastRequestNs, nowNs)]
            if let a = w.lastAppendNs { o["last_append_age_seconds"] = age(a, nowNs) }
            return o
        }
    }

    private func age(_ t: UInt64, _ now: UInt64) -> Double { now > t ? Double(now - t) / 1e9 : 0 }
}
