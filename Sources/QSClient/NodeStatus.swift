import Foundation
import QSNet

/// What a node's status (`qsctl status`'s JSON) says of its write role and, as a compatible
/// mirror, of the roots its mirror bridges read: what a writer choosing among `--root`
/// addresses and `qsctl promote` both go by.
public enum NodeStatus {
    public static func parse(_ json: String) -> [String: Any]? {
        (try? JSONSerialization.jsonObject(with: Data(json.utf8))) as? [String: Any]
    }

    /// A compatible mirror (demoted, or fed by `qsqsbridge --mode compatible`): `write_role`
    /// "mirror", or `compatible_mirror` true from a node that reports no `write_role`.
    public static func isMirror(_ status: [String: Any]) -> Bool {
        if let role = status["write_role"] as? String { return role == "mirror" }
        return status["compatible_mirror"] as? Bool == true
    }

    /// The roots a compatible mirror's live mirror bridges read, as their hellos name them
    /// (`source=qs://HOST:PORT`); empty when no bridge feeds it now.
    public static func mirroredSources(_ status: [String: Any]) -> [Endpoint] {
        guard let mirror = status["mirror"] as? [String: Any] else { return [] }
        let clients = (mirror["followed_by"] as? [[String: Any]] ?? []).compactMap { $0["client"] as? String }
        return unique(clients.compactMap(source(ofClient:)))
    }

    /// Every root a compatible mirror is known to have followed: its live bridges' sources,
    /// those of bridges still connected but silent (stopped, hung), and those its bridges
    /// ever named (`mirror.sources_seen`, kept across restarts), even once gone.
    public static func knownSources(_ status: [String: Any]) -> [Endpoint] {
        let mirror = status["mirror"] as? [String: Any] ?? [:]
        let connected = (status["writers"] as? [[String: Any]] ?? []).compactMap { $0["client"] as? String }
            .filter { $0.contains("mode=compatible") }.compactMap(source(ofClient:))
        let seen = (mirror["sources_seen"] as? [String] ?? []).compactMap(endpoint(ofSource:))
        return unique(mirroredSources(status) + connected + seen)
    }

    /// The root a bridge's hello says it reads (`source=qs://HOST:PORT` in its client
    /// string), as `qs://HOST:PORT`.
    public static func sourceAddress(ofClient client: String) -> String? {
        client.split(separator: " ").first { $0.hasPrefix("source=qs://") }.map { String($0.dropFirst("source=".count)) }
    }

    /// Whether `address` is a source as a compatible bridge names it: `qs://` and a valid
    /// HOST:PORT.
    public static func isSourceAddress(_ address: String) -> Bool {
        !address.contains(where: \.isWhitespace) && endpoint(ofSource: address) != nil
    }

    private static func source(ofClient client: String) -> Endpoint? {
        sourceAddress(ofClient: client).flatMap(endpoint(ofSource:))
    }

    private static func endpoint(ofSource address: String) -> Endpoint? {
        address.hasPrefix("qs://") ? try? Endpoint(parsing: String(address.dropFirst("qs://".count))) : nil
    }

    private static func unique(_ endpoints: [Endpoint]) -> [Endpoint] {
        var seen = Set<String>()
        return endpoints.filter { seen.insert("\($0)").inserted }
    }
}
