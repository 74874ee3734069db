import QSClient
import QSModel
import QSWire

/// One batch written through a root cluster's member with its outcome known. On a loaded
/// machine etcd may answer late or say `leader changed` for a proposal it committed, and the
/// member then answers "etcd did not confirm the commit" (docs/ha.md): the outcome is
/// unknown. A writer resolves it through the checkpoint, as a bridge does, and sends the
/// batch again only when the checkpoint shows it was not applied.
enum ClusterWrites {
    /// Sends `operations` as `sourceID`'s batch `expected → new` through `c`; returns the
    /// member's answer (`.applied` or `.conflict`), or nil when the answer was lost or not
    /// confirmed and the checkpoint then showed the batch applied. Throws a `not-writable`
    /// refusal as it is, and what cannot be resolved within 20 s.
    static func put(_ c: QSClient, sourceID: String, expected: UInt64, new: UInt64, operations: [Mutation]) async throws -> Response? {
        while true {
            do {
                return try await c.batch(sourceID: sourceID, expected: expected, new: new, operations: operations)
            } catch let ClientError.server(code, message) where code == ErrorCode.notWritable.rawValue {
                throw ClientError.server(code: code, message: message)
            } catch let error as ClientError {
                if case .unexpected = error { throw error }
                print("batch \(sourceID) \(expected) → \(new): \(error); resolving it through the checkpoint")
                let deadline = ContinuousClock.now + .seconds(20)
                var resolved: UInt64?
                while resolved == nil, ContinuousClock.now < deadline {
                    if let cp = try? await c.checkpoint(sourceID: sourceID) { resolved = cp ?? 0 } else {
                        try? await Task.sleep(for: .milliseconds(50))
                    }
                }
                guard let cp = resolved, cp == expected || cp == new else {
                    throw ClientError.unexpected("batch \(sourceID) \(expected) → \(new): \(error); then the checkpoint: \(resolved.map(String.init) ?? "no answer")")
                }
                if cp == new { return nil }
            }
        }
    }
}
