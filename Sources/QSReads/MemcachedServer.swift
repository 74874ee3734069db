import Logging
import NIOCore
import NIOPosix
import QSNet
import QSModel
import QSStore
import ServiceLifecycle

/// The memcached text protocol, read-only, on TCP and Unix sockets: `get`, `gets`,
/// `version`, `stats`, `quit`; writes are refused with `SERVER_ERROR read-only: …` (their
/// data block is consumed so the connection stays in sync). Keys are read from one KT
/// database of the map (database 0 unless told otherwise), as KT's plug-in did.
public struct MemcachedServer: ListeningService {
    public struct Configuration: Sendable {
        public var databases: KTDatabaseMap
        /// The KT database the plug-in served (its `dbidx`).
        public var database: Int
        public var valueFormat: MemcachedValueFormat
        public var limits: MemcachedLimits
        /// What `version` answers. KT's plug-in answered `KyotoTycoon/0.9.56b`; clients that
        /// look at it keep seeing the same.
        public var version: String
        public var clock: ReadClock
        /// Reader threads that serve busy connections with blocking reads
        /// (`Listener.runThreaded`); 0 serves every connection on the event loops.
        public var threads: Int
        /// How long a connection on a reader thread may send nothing before it is parked.
        public var parkAfter: TimeAmount = ThreadedServing.defaultParkAfter
        /// `ThreadedServing.inlineAfter`.
        public var inlineAfter: TimeAmount? = ThreadedServing.defaultInlineAfter
        /// `ThreadedServing.inlineBudget`.
        public var inlineBudget = ThreadedServing.defaultInlineBudget
        /// The read ports' budget for large replies not yet read (`ReplyMemory`).
        public var replyMemory = ReplyMemory(limit: ReplyMemory.defaultLimit)

        public init(databases: KTDatabaseMap = .single, database: Int = 0,
                    valueFormat: MemcachedValueFormat = MemcachedValueFormat(),
                    limits: MemcachedLimits = MemcachedLimits(), version: String = "KyotoTycoon/0.9.56b",
                    clock: @escaping ReadClock = { wallClockSeconds() }, threads: Int = 0) {
            self.databases = databases
            self.database = database
            self.valueFormat = valueFormat
            self.limits = limits
            self.version = version
            self.clock = clock
            self.threads = threads
        }
    }

    public let listener: Listener
    let session: MemcachedSession
    let limits: MemcachedLimits
    let threads: ThreadedServing

    public init(store: Store, endpoints: [Endpoint], logger: Logger,
                configuration: Configuration = Configuration(), connections: ConnectionLimits = ConnectionLimits(),
                group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        limits = configuration.limits
        threads = ThreadedServing(threads: configuration.threads, parkAfter: configuration.parkAfter, inlineAfter: configuration.inlineAfter,
                                  inlineBudget: configuration.inlineBudget)
        // The handler answers every request within the socket read that brought it, so it
        // drains itself: on shutdown it closes once what it wrote is sent.
        listener = Listener(name: "memcached", endpoints: endpoints, drain: .pipeline, limits: connections, group: group, logger: logger)
        session = MemcachedSession(config: configuration, store: store,
                                   metrics: ReadMetrics(interface: "memcached"), logger: logger, stats: MemcachedStats())
    }

    public func run() async throws {
        let session = self.session, limits = self.limits
        if threads.threads > 0 {
            try await listener.runThreaded(MemcachedThreads(session: session, limits: limits), serving: threads)
            return
        }
        let slots = LoopReadSlots(store: session.store)
        // The handler keeps the connection's watch (idle timeout, request deadline, write
        // timeout) itself: no guard handler in front of it.
        try await listener.run(watched: { channel, watch in
            let peer = channel.remoteAddress?.peerDescription ?? channel.localAddress?.peerDescription ?? "unknown"
            let ops = channel.pipeline.syncOperations
            // A client's end after its commands (`printf … | nc -N`) is the handler's to act
            // on: what came before it is answered and written whole, then it closes, as
            // memcached does (closed on the end, a reply the socket had not taken was cut).
            try channel.syncOptions?.setOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            try ops.addHandler(MemcachedHandler(session: session, limits: limits, peer: peer,
                                                slot: slots.slot(for: channel.eventLoop), watch: watch))
        })
    }
}

/// One memcached connection, framed, decoded and answered by this one handler on the
/// connection's event loop (no decoder stage, no command values for `get`): each line as
/// it is found in the socket's bytes, into one output buffer written and flushed once when
/// the socket read is done (or when it holds `flushBytes`), so pipelined commands share a
/// write, without a promise. Commands are answered in order. On graceful shutdown it reads
/// no more and closes once what it answered is sent (it has no request in flight between
/// socket reads). While the socket does not take the replies it answers no more lines
/// and reads no more (as NIO's `BackPressureHandler`): a client that sends many requests and
/// reads none costs the node the replies past the channel's high-water mark and the
/// unanswered bytes of one socket read, never the replies to everything it sent.
final class MemcachedHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let session: MemcachedSession
    private let peer: String
    /// The event loop's read transaction, renewed for each `get`.
    private let slot: ReadSlot
    private var framing: MemcachedFraming
    /// The bytes not answered yet: a line not yet whole, or (`paused`) whole lines waiting
    /// for the socket to take the replies before them.
    private var pending: ByteBuffer?
    /// Answering stopped because the socket did not take the replies: `pending` holds
    /// whole lines, answered when the channel is writable again.
    private var paused = false
    private var out = ByteBuffer()
    /// What `out`'s replies hold of the reply budget, handed on when it is written.
    private var outHeld = 0
    private var closing = false
    /// A read was asked for while the socket did not take the replies.
    private var readHeld = false
    /// The client sent its end while answering was paused: it closes once the lines
    /// waiting are answered.
    private var inputEnded = false
    /// The channel's writability as its events said (asking the channel is an atomic load
    /// and a few calls per read).
    private var writable = true

    /// The connection's idle timeout, request deadline and write timeout.
    private let watch: ConnectionWatch

    init(session: MemcachedSession, limits: MemcachedLimits, peer: String, slot: ReadSlot, watch: ConnectionWatch) {
        self.session = session
        self.peer = peer
        self.slot = slot
        self.watch = watch
        framing = MemcachedFraming(limits: limits)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        session.metrics.opened()
        out = context.channel.allocator.buffer(capacity: 4096)
        watch.added(context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        watch.removed()
        session.metrics.closed()
        // Replies answered and never written (the connection ended first): their hold goes.
        session.config.replyMemory.release(outHeld)
        outHeld = 0
    }

    func channelInactive(context: ChannelHandlerContext) {
        watch.removed()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !closing else { return }
        watch.received()
        var input = unwrapInboundIn(data)
        if var held = pending {
            pending = nil
            held.writeBuffer(&input)
            input = held
        }
        // Bytes of a read already under way while answering is paused wait behind the rest.
        guard !paused else {
            pending = input
            return
        }
        answer(&input, context: context)
    }

    /// Answers the whole lines of `input`, stopping (`paused`) when a write leaves the
    /// channel not writable; what is not answered stays in `pending`.
    private func answer(_ input: inout ByteBuffer, context: ChannelHandlerContext) {
        let watch = self.watch
        let outcome = session.answerLines(&input, framing: &framing, into: &out, held: &outHeld, peer: peer, slot: slot) { out, held in
            if context.writeReplies(&out, held: &held, thenClose: false, memory: self.session.config.replyMemory) { watch.answered() }
            // Writability events come within the write: `writable` is the channel's now.
            return self.writable
        }
        switch outcome {
        case .close:
            closing = true
            writeOut(context, thenClose: true)
        case .paused:
            paused = true
            pending = input
        case .open, .handOver:
            // (`answerLines` hands nothing over: memcached is answered whole on either side.)
            if input.readableBytes > 0 {
                input.discardReadBytes()
                pending = input
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        writeOut(context)
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if writable && !paused {
            context.read()
        } else {
            readHeld = true
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        watch.writabilityChanged(context)
        writable = context.channel.isWritable
        if paused && writable && !closing, var input = pending {
            paused = false
            pending = nil
            answer(&input, context: context)
            if inputEnded && !paused && !closing {
                closing = true
                pending = nil
                writeOut(context, thenClose: true)
            } else {
                writeOut(context)
            }
        }
        if readHeld && writable && !paused {
            readHeld = false
            context.read()
        }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        session.logger.debug("memcached connection ended with an error", metadata: ["peer": "\(peer)", "error": "\(error)"])
        context.close(promise: nil)
    }

    /// Graceful shutdown: no more requests are read; the connection closes once what was
    /// answered is sent (an empty write completes after every write before it).
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let end = event as? ChannelEvent, end == .inputClosed {
            // The client's end: the lines before it are answered (those waiting for the
            // socket once it takes the replies before them), a line not whole is dropped,
            // and the connection closes once the replies are written.
            guard !closing else { return }
            if paused {
                inputEnded = true
            } else {
                closing = true
                pending = nil
                writeOut(context, thenClose: true)
            }
            return
        }
        guard event is ChannelShouldQuiesceEvent else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        guard !closing else { return }
        closing = true
        pending = nil
        writeOut(context, thenClose: true)
    }

    /// Writes what was answered (and closes after it, `thenClose`).
    private func writeOut(_ context: ChannelHandlerContext, thenClose: Bool = false) {
        if context.writeReplies(&out, held: &outHeld, thenClose: thenClose, memory: session.config.replyMemory) { watch.answered() }
        // Closing lingering (`LingeringClose`): what the peer still sends is no request, and
        // its quiet then is the linger's to time, not the idle timeout's.
        if thenClose { watch.streaming() }
    }
}

extension MemcachedSession {
    /// Replies gathered past this many bytes are written before the next line is answered.
    static let flushBytes = 64 << 10

    /// Answers the whole lines of `input` into `out`, in order (a line not yet whole stays
    /// in `input`); `flush` writes `out` whenever it holds `flushBytes` and says whether to
    /// go on (false: the socket does not take more now, or the connection broke): then the
    /// lines not answered stay in `input` (`.paused`). `.close`: the connection is to close
    /// once `out` is written. `held`: what `out`'s replies hold of the reply budget, handed
    /// on with `out` to `flush` and to whoever writes it after. (The event-loop handler's
    /// and the reader threads' one loop.)
    @inline(__always)
    func answerLines(_ input: inout ByteBuffer, framing: inout MemcachedFraming, into out: inout ByteBuffer, held: inout Int,
                     peer: String, slot: ReadSlot, flush: (inout ByteBuffer, inout Int) -> Bool) -> Answering {
        while let next = framing.next(&input) {
            switch next {
            case let .failure(command):
                _ = answer(command, into: &out, held: &held, peer: peer, slot: slot)
                return .close
            case let .line(start, count):
                let (open, skip) = input.withBytes(at: start, count: count) { line in
                    answer(line: line, into: &out, held: &held, peer: peer, slot: slot)
                }
                framing.skip = skip
                if !open { return .close }
            }
            if out.readableBytes >= Self.flushBytes && !flush(&out, &held) { return .paused }
        }
        return .open
    }
}

/// The memcached protocol on a threaded listener (`--memcached-threads`): each reader thread
/// keeps a read transaction of its own (`ReadSlot`), each connection its framing; the
/// answers are the event-loop handler's (`MemcachedSession.answerLines`).
struct MemcachedThreads: ThreadedProtocol {
    let session: MemcachedSession
    let limits: MemcachedLimits

    struct Connection {
        var framing: MemcachedFraming
        let peer: String
    }

    func makeWorker() -> ReadSlot { session.store.makeReadSlot() }

    func open(peer: String) -> Connection {
        session.metrics.opened()
        return Connection(framing: MemcachedFraming(limits: limits), peer: peer)
    }

    func received(_ input: inout ByteBuffer, connection: inout Connection, into out: inout ByteBuffer, held: inout Int,
                  worker: ReadSlot, flush: (inout ByteBuffer, inout Int) -> Bool) -> Answering {
        session.answerLines(&input, framing: &connection.framing, into: &out, held: &held, peer: connection.peer, slot: worker, flush: flush)
    }

    func closed(_ connection: Connection) { session.metrics.closed() }

    var replyMemory: ReplyMemory? { session.config.replyMemory }
}
