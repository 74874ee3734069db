import KTFormats
import NIOCore
import QSNet

/// Serves KT's binary protocol on a connection whose first byte is ≥ 0x80: bulk
/// operations and script calls, or a replication session that takes the connection over.
///
/// Requests are decoded with `KTBinaryRequestDecoder.next` from the handler's own buffer
/// rather than in a `ByteToMessageHandler`, because a replication request switches the
/// connection to another protocol mid-stream: the bytes after it (the client's heartbeat
/// acknowledgements) go to the replication session, which NIO's decoder handlers cannot
/// hand over. The buffer is bounded as theirs would be: more than
/// `maxBinaryRequestBytes` without a whole request is refused and closes the connection.
final class BinaryHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let core: FakeKTCore
    private var buffer: ByteBuffer?
    private var replication: ReplicationSession?
    /// Set once a request was refused: what still arrives before the close is dropped.
    private var closing = false

    init(core: FakeKTCore) {
        self.core = core
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if closing { return }
        if let replication {
            replication.received(&incoming, context: context)
            return
        }
        if buffer == nil { buffer = incoming } else { buffer?.writeBuffer(&incoming) }
        guard var buf = buffer else { return }
        defer { buffer = buf.readableBytes > 0 ? buf : nil }
        while replication == nil {
            let request: KTBinaryRequest?
            do {
                request = try KTBinaryRequestDecoder.next(&buf)
            } catch {
                refuse("binary: \(error)", &buf, context: context)
                return
            }
            guard let request else {
                let limit = core.configuration.maxBinaryRequestBytes
                if buf.readableBytes > limit {
                    refuse("binary: \(buf.readableBytes) bytes without a whole request, the limit is \(limit)", &buf, context: context)
                }
                return
            }
            handle(request, context: context, rest: &buf)
        }
    }

    /// A request that cannot be served: reported, then KT's answer and close. KT closes on
    /// an unknown command at once, and answers 0xBF to a bad (or oversized) one.
    private func refuse(_ reason: String, _ buf: inout ByteBuffer, context: ChannelHandlerContext) {
        core.reportMalformed(reason, peer: context.channel.remoteAddress?.description ?? "?")
        let known: Set<UInt8> = [KTBinaryMagic.replication, KTBinaryMagic.playScript, KTBinaryMagic.setBulk,
                                 KTBinaryMagic.removeBulk, KTBinaryMagic.getBulk]
        let first = buf.getInteger(at: buf.readerIndex, as: UInt8.self) ?? 0
        buf.clear()
        closing = true
        let reply: [UInt8] = known.contains(first) ? [KTBinaryMagic.error] : []
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: reply)))
            .whenComplete { [channel = context.channel] _ in channel.close(promise: nil) }
    }

    private func handle(_ request: KTBinaryRequest, context: ChannelHandlerContext, rest: inout ByteBuffer) {
        core.requestCounter.increment()
        let reply: KTBinaryResponse
        switch request {
        case .setBulk(_, let records):
            let dbCount = core.withStore { $0.databases.count }
            let hits = core.withStore { store -> UInt32 in
                var hits: UInt32 = 0
                for r in records where Int(r.db) < dbCount {
                    store.set(db: Int(r.db), key: r.key, value: r.value, xt: r.expiration)
                    hits += 1
                }
                return hits
            }
            reply = .setBulk(hits: hits)
        case .removeBulk(_, let keys):
            let hits = core.withStore { store -> UInt32 in
                var hits: UInt32 = 0
                for k in keys where Int(k.db) < store.databases.count {
                    if (try? store.remove(db: Int(k.db), key: k.key)) != nil { hits += 1 }
                }
                return hits
            }
            reply = .removeBulk(hits: hits)
        case .getBulk(_, let keys):
            let records = core.withStore { store -> [KTBinaryRecord] in
                keys.compactMap { k in
                    guard Int(k.db) < store.databases.count, let r = try? store.get(db: Int(k.db), key: k.key) else { return nil }
                    return KTBinaryRecord(db: k.db, key: k.key, value: r.value, expiration: r.expiration)
                }
            }
            reply = .getBulk(records: records)
        case .playScript(_, let name, let arguments):
            // Without a script file, or for any procedure but echo, KT answers its error byte.
            if core.configuration.scriptFile != nil,
               let results = ScriptProcessor.call(Array(name.prefix { $0 != 0 }), arguments.map { ($0.key, $0.value) }) {
                reply = .playScript(results: results)
            } else {
                reply = .error
            }
        case .replication(let r):
            guard core.configuration.ulogDirectory != nil else {
                core.logger.info("no update log allows no replication", metadata: ["peer": "\(context.channel.remoteAddress?.description ?? "?")"])
                closing = true
                rest.clear()
                context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: [KTBinaryMagic.error])))
                    .whenComplete { [channel = context.channel] _ in channel.close(promise: nil) }
                return
            }
            IdleTimeout.remove(from: context.pipeline.syncOperations)
            let session = ReplicationSession(core: core, request: r, context: context)
            replication = session
            session.start()
            if rest.readableBytes > 0 { session.received(&rest, context: context) }
            return
        }
        // get_bulk always answers; the others honour the no-reply flag.
        if case .getBulk = request {} else if request.noReply { return }
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: reply.encoded())), promise: nil)
    }

    /// Graceful shutdown: requests are answered as they arrive, so nothing is in flight;
    /// a replication stream ends and the connection closes.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            replication?.stop()
            replication = nil
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        replication?.stop()
        replication = nil
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { replication?.resume() }
        context.fireChannelWritabilityChanged()
    }
}
