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
///
/// A `get_bulk` comes whole and unparsed (`KTBinaryReadDecoder`); its keys are walked and
/// its reply encoded in one read on the store's threads, each value copied once, straight
/// from the store into the reply, which is held against the reply budget as it grows
/// (`GatheredReply`) until the socket has taken it. Large requests (many keys, or long
/// ones) wait their turn among the port's scans, so a crowd of them leaves the store's
/// other threads to the node's own reads. Replies are written one at a time, each once
/// the socket has taken the one before: a client that reads nothing holds one reply.
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
    /// The KT port's scans (shared with its HTTP side).
    let scans: ScanGate
    /// Requests of this many bytes of keys or more, or naming `scannedKeys` keys or more,
    /// run among the scans.
    static let scannedBytes = 64 << 10
    static let scannedKeys = 1024

    /// `ends`: whether the client sent its end (its requests before it are answered, then
    /// the connection closes) or the drain reached it. The error reply 0xBF closes the
    /// connection lingering (`LingeringClose`): a client still writing its request (a large
    /// `set_bulk` sent to a read-only node) reads the error, not a reset. Its share of the
    /// port's budget is given back as the linger begins (held until the linger's end, one
    /// client sending a byte every 2 s kept the port's other `get_bulk`s and bodies refused).
    func run(_ connection: NIOAsyncChannel<KTBinaryRead, ByteBuffer>, share: KTBinaryShare, ends: KTConnectionEnds,
             peer: String, drain: RequestDrain?) async {
        let channel = connection.channel
        do {
            try await connection.executeThenClose { inbound, _ in
                do {
                    for try await request in inbound {
                        drain?.begin()
                        defer { drain?.end() }
                        switch request {
                        case .refused(let refused):
                            refuse(refused, peer: peer)
                            try await channel.writeAndFlush(Self.errorReply)
                            await LingeringClose.closeAndWait(channel, lingering: { share.releaseAll() })
                            return
                        case .overBudget(let bytes, let whole):
                            metrics.requests("bad").increment()
                            metrics.bad(logger, peer: peer, reason: whole
                                        ? "binary get_bulk: answering it would hold about \(bytes) bytes, more than the port keeps for requests (--kt-max-pending-bytes); send fewer keys a request"
                                        : "binary get_bulk: the requests on this port hold all it keeps for them now (--kt-max-pending-bytes)")
                            try await channel.writeAndFlush(Self.errorReply)
                            await LingeringClose.closeAndWait(channel, lingering: { share.releaseAll() })
                            return
                        case let .getBulk(flags, count, keys, held):
                            defer { share.release(held) }
                            metrics.requests("bin_get_bulk").increment()
                            // No reply asked for: nothing to read (KT answers nothing either).
                            guard flags & KTBinaryMagic.noReplyFlag == 0 else { continue }
                            var reply: GatheredReply
                            let answer: [ByteBuffer]
                            do {
                                let keys = KTBinaryKeys(keys: keys, count: count)
                                // Stops once its connection has closed, or its input ended while
                                // other scans wait or the node stops (checked every 4,096 keys).
                                let scans = self.scans
                                let abandoned: @Sendable () -> Bool = { !channel.isActive || ends.yields(to: scans) }
                                let read: @Sendable () async throws -> ([ByteBuffer], GatheredReply) = { [self] in
                                    if abandoned() { throw KTRequestAbandoned() }
                                    return try await store.read { txn in try gather(keys, abandoned: abandoned, txn) }
                                }
                                (answer, reply) = keys.keys.readableBytes >= Self.scannedBytes || count >= Self.scannedKeys
                                    ? try await scans.run(read) : try await read()
                            } catch is KTRequestAbandoned {
                                metrics.requests("abandoned").increment()
                                return
                            } catch let large as KTReplyTooLarge {
                                // KT's error reply, after which KT closes (its clients take it as a
                                // hard error and connect again). Found while the records were
                                // gathered: they were not all read and held first.
                                metrics.refusedForMemory(logger, peer: peer, bytes: large.bytes, memory: replyMemory)
                                try await channel.writeAndFlush(Self.errorReply)
                                await LingeringClose.closeAndWait(channel, lingering: { share.releaseAll() })
                                return
                            }
                            defer { reply.release() }
                            for part in answer.dropLast() { channel.write(part, promise: nil) }
                            try await channel.writeAndFlush(answer[answer.count - 1])
                        }
                    }
                } catch let tooLarge as ByteToMessageDecoderError.PayloadTooLargeError {
                    // KT's error reply (ktserver takes any size: it has no words of its own for
                    // this), then the connection closes lingering, so a client still writing
                    // the request reads it. Counted below.
                    if channel.isActive {
                        try? await channel.writeAndFlush(Self.errorReply)
                        await LingeringClose.closeAndWait(channel, lingering: { share.releaseAll() })
                    }
                    throw tooLarge
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

    static let errorReply = ByteBuffer(bytes: KTBinaryResponse.error.encoded())

    /// The reply to `keys`: the live records among them, in request order, each key once,
    /// with KT's stored expiration times (`0xBA hits:u32 (db:u16 ksiz:u32 vsiz:u32 xt:i64
    /// key value)*`), in parts written one after another, and what it holds of the reply
    /// budget. Parts of at least `partBytes` (a larger record in one of its own size): a
    /// reply grown in one buffer doubled it at each step, up to twice what the budget held.
    /// Throws `KTReplyTooLarge`, nothing held, when the budget has no room for it.
    func gather(_ keys: KTBinaryKeys, abandoned: () -> Bool, _ txn: borrowing StoreTransaction) throws -> ([ByteBuffer], GatheredReply) {
        let now = clock()
        var reply = GatheredReply(memory: replyMemory, startingAt: 5)
        var parts: [ByteBuffer] = []
        var out = ByteBuffer()
        out.writeInteger(KTBinaryMagic.getBulk)
        out.writeInteger(UInt32(0))
        var full: [UInt8] = []
        var walked = 0
        do {
            try keys.forEachOnce { dbIndex, key in
                walked += 1
                if walked & 4095 == 0, abandoned() { throw KTRequestAbandoned() }
                guard let db = databases.database(index: Int(dbIndex)) else { return }
                full.removeAll(keepingCapacity: true)
                full += db.prefix
                full += key
                guard databases.owns(db, key: full) else { return }
                try txn.withRecord(full) { r in
                    guard let r, !r.isExpired(at: now) else { return }
                    // The reply grown by this record, asked of the budget before it is copied.
                    let size = 18 + key.count + r.value.count
                    guard reply.add(size) else { throw KTReplyTooLarge(bytes: reply.bytes + size, kind: "bin_get_bulk") }
                    if out.writableBytes < size, out.readableBytes >= 4096 {
                        parts.append(out)
                        out = ByteBufferAllocator().buffer(capacity: max(Self.partBytes, size))
                    }
                    out.writeInteger(dbIndex)
                    out.writeInteger(UInt32(key.count))
                    out.writeInteger(UInt32(r.value.count))
                    out.writeInteger(r.expiry.map { Int64(clamping: $0) } ?? KTExpiration.never)
                    out.writeBytes(key)
                    out.writeBytes(r.value)
                }
            }
        } catch {
            reply.release()
            throw error
        }
        parts.append(out)
        parts[0].setInteger(UInt32(reply.values), at: parts[0].readerIndex + 1)
        return (parts, reply)
    }

    /// The least a part of a reply holds (`gather`).
    static let partBytes = 256 << 10

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
