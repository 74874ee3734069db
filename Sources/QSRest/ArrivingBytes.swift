import Metrics
import NIOConcurrencyHelpers
import QSNet

/// The bytes of request bodies still arriving (read, not yet parsed and queued), held
/// against two budgets: all connections together (`--max-arriving-bytes`) and each
/// producer's share of that (`--max-arriving-bytes-per-producer`), so one producer's slow
/// uploads cannot take the whole budget from the others. A producer's share is made at its
/// first request: producers are named by the ACL, so the shares are as many as they are.
final class ArrivingBytes: Sendable {
    let all: PendingBytes
    let perProducer: Int
    private let shares = NIOLockedValueBox<[String: PendingBytes]>([:])

    init(limit: Int, perProducer: Int, gauge: Gauge?) {
        all = PendingBytes(limit: limit, gauge: gauge)
        self.perProducer = perProducer
    }

    /// The share `producer`'s bodies are held against (a part of `all`).
    func share(of producer: String) -> PendingBytes {
        shares.withLockedValue { shares in
            if let s = shares[producer] { return s }
            let s = PendingBytes(limit: perProducer, parent: all)
            shares[producer] = s
            return s
        }
    }
}
