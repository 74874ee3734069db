import KTFormats
import Logging
import NIOCore
import QSBytes
import QSModel
import QSNet
import QSStore

/// Serves KT's binary protocol on the KT port: `get_bulk` (0xBA) is answered from the
/// store; `set_bulk`, `remove_bulk` (writes) and `play_script`, replication (not served)
/// get KT's error reply (0xBF), are counted and logged, and close the connection.
struct KTBinarySession: Sendable {
    let store: Store
    let databases: KTDatabaseMap
    let clock: ReadClock
    /// The connection's buffer limit (`maximumBufferSize` of its decoder), for log lines.
    let maxRequestBytes: Int
    let metrics: ReadMetrics
    let logger: Logger
    /// The read ports' budget for large replies not yet read.
    let replyMemory: ReplyMemory

    func run(_ connection: NIOAsyncChannel<KTBinaryRequest, ByteBuffer>, peer: String, drain: RequestDrain?) async {
        do {
            try await connection.executeThenClose { inbound, outbound in
                for try await request in inbound {
                    drain?.begin()
                    defer { drain?.end() }
                    guard case let .getBulk(flags, keys) = request else {
                        refuse(request, peer: peer)
                        try await outbound.write(ByteBuffer(bytes: KTBinaryResponse.error.encoded()))
                        return
                    }
                    metrics.requests("bin_get_bulk").increment()
                    let records = try await store.read { txn in try read(keys, txn) }
                    if flags & KTBinaryMagic.noReplyFlag == 0 {
                        let bytes = records.reduce(0) { $0 + $1.key.count + $1.value.count + 18 }
                        guard replyMemory.admits(bytes) else {
                            // KT's error reply, after which KT closes (its clients take it
                            // as a hard error and connect again); the bytes it would have
                            // been are counted by `ReplyMemoryCounter` in the pipeline.
                            metrics.refusedForMemory(logger, peer: peer, bytes: bytes, memory: replyMemory)
                            try await outbound.write(ByteBuffer(bytes: KTBinaryResponse.error.encoded()))
                            return
                        }
                        try await outbound.write(ByteBuffer(bytes: KTBinaryResponse.getBulk(records: records).encoded()))
                    }
                }
            }
        } catch let error as DecodeError {
            metrics.requests("bad").increment()
            metrics.bad(logger, peer: peer, reason: "binary protocol: \(error)")
        } catch is ByteToMessageDecoderError.PayloadTooLargeError {
            metrics.requests("bad").increment()
            metrics.bad(logger, peer: peer, reason: "binary protocol: request larger than \(maxRequestBytes) bytes")
        } catch {
            logger.debug("KT binary connection ended with an error", metadata: ["peer": "\(peer)", "error": "\(error)"])
        }
    }

    /// The live records among `keys`, in request order, with KT's stored expiration times.
    private func read(_ keys: [KTBinaryKey], _ txn: borrowing StoreTransaction) throws -> [KTBinaryRecord] {
        let now = clock()
        var out = [KTBinaryRecord]()
        // Each key once, as `/rpc/get_bulk` answers: one key named many times in a small
        // request would otherwise build a reply of gigabytes from a large value.
        var seen = Set<KTBinaryKey>()
        for k in keys where seen.insert(k).inserted {
            guard let db = databases.database(index: Int(k.db)) else { continue }
            let full = db.prefix + k.key
            guard databases.owns(db, key: full), let r = try txn.get(full), !r.isExpired(at: now) else { continue }
            let xt = r.expiry.map { Int64(clamping: $0) } ?? KTExpiration.never
            out.append(KTBinaryRecord(db: k.db, key: k.key, value: r.value, expiration: xt))
        }
        return out
    }

    private func refuse(_ request: KTBinaryRequest, peer: String) {
        switch request {
        case .setBulk, .removeBulk:
            metrics.requests("write").increment()
            metrics.refusedWrite(logger, peer: peer, write: "binary \(request.name)")
        default:
            metrics.requests("unknown").increment()
            metrics.bad(logger, peer: peer, reason: "binary \(request.name) is not served")
        }
    }
}

extension KTBinaryRequest {
    var name: String {
        switch self {
        case .setBulk: return "set_bulk"
        case .removeBulk: return "remove_bulk"
        case .getBulk: return "get_bulk"
        case .playScript: return "play_script"
        case .replication: return "replication"
        }
    }
}
