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
        return clients.compactMap { client in
            client.split(separator: " ").first { $0.hasPrefix("source=qs://") }.flatMap { try? Endpoint(parsing: String($0.dropFirst(12))) }
        }
    }
}
