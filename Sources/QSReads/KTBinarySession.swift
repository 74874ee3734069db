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
                    // No reply asked for: nothing to read (KT answers nothing either).
                    guard flags & KTBinaryMagic.noReplyFlag == 0 else { continue }
                    let records: [KTBinaryRecord]
                    do {
                        records = try await store.read { txn in try read(keys, txn) }
                    } catch let large as KTReplyTooLarge {
                        // KT's error reply, after which KT closes (its clients take it as a
                        // hard error and connect again). Found while the records were
                        // gathered: they were not all read and held first.
                        metrics.refusedForMemory(logger, peer: peer, bytes: large.bytes, memory: replyMemory)
                        try await outbound.write(ByteBuffer(bytes: KTBinaryResponse.error.encoded()))
                        return
                    }
                    // The bytes written are counted by `ReplyMemoryCounter` in the pipeline.
                    try await outbound.write(ByteBuffer(bytes: KTBinaryResponse.getBulk(records: records).encoded()))
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
        var out = [KTBinaryRecord](), bytes = 0
        // Each key once, as `/rpc/get_bulk` answers: one key named many times in a small
        // request would otherwise build a reply of gigabytes from a large value.
        var seen = Set<KTBinaryKey>()
        for k in keys where seen.insert(k).inserted {
            guard let db = databases.database(index: Int(k.db)) else { continue }
            let full = db.prefix + k.key
            guard databases.owns(db, key: full), let r = try txn.get(full), !r.isExpired(at: now) else { continue }
            let xt = r.expiry.map { Int64(clamping: $0) } ?? KTExpiration.never
            // The reply's size so far, asked of the budget before the value is kept.
            bytes += k.key.count + r.value.count + 18
            guard replyMemory.admitsGathered(bytes, values: out.count + 1) else { throw KTReplyTooLarge(bytes: bytes, kind: "bin_get_bulk") }
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
