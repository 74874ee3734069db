#if canImport(Glibc)
import Glibc
#endif
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A connection a reader thread gives to the event loops (`Answering.handOver`): its socket,
/// what the protocol says of it, the bytes read and not answered, and the replies answered
/// and not yet taken by the socket.
struct HandedOver<HandOff: Sendable>: Sendable {
    let fd: Int32
    let peerIP: String?
    let handOff: HandOff
    let leftover: ByteBuffer
    let owed: ByteBuffer
    /// When the request `leftover` starts with began, if before the read that handed it
    /// over: its deadline carries over.
    let requestSince: NIODeadline?
    /// The budget `owed` stays held against until written, as it was on the thread.
    let memory: ReplyMemory?
    /// What of `memory` the thread held for `owed` (its replies, held as they were built):
    /// the hold goes on as the channel's write's, never given back in between.
    let held: Int
}

/// The event-loop side of a threaded listener whose protocol hands connections over: each
/// socket becomes a NIO channel set up as the listener sets up an accepted connection
/// (`Listener.setUp`: guard, drain, counting, then `configure`), the replies owed are
/// written first, the bytes left are fired into the pipeline as a read, and then it reads
/// the socket itself. The channels are kept until they close, for the drain: on graceful
/// shutdown each is told to quiesce (as the event-loop listener's children are), on
/// cancellation closed; one handed over after that is told at once.
final class ThreadedHandOver<HandOff: Sendable, Connection: Sendable>: Sendable {
    private let listener: Listener
    private let configure: @Sendable (any Channel, HandOff) throws -> Connection
    /// The connections set up, for `runThreaded` to run `handle` on.
    let accepted: AsyncStream<AcceptedConnection<Connection>>
    private let continuation: AsyncStream<AcceptedConnection<Connection>>.Continuation

    private struct State {
        var channels: [ObjectIdentifier: any Channel] = [:]
        /// Hand-overs whose channel is not set up yet.
        var pending = 0
        var threadsDone = false
        var stopping = false
        var aborting = false
    }
    private let state = NIOLockedValueBox(State())

    init(listener: Listener, configure: @escaping @Sendable (any Channel, HandOff) throws -> Connection) {
        self.listener = listener
        self.configure = configure
        (accepted, continuation) = AsyncStream.makeStream(of: AcceptedConnection<Connection>.self)
    }

    /// Called on the reader thread that hands `h` over.
    func adopt(_ h: HandedOver<HandOff>) {
        state.withLockedValue { $0.pending += 1 }
        let listener = self.listener, configure = self.configure, counter = listener.counter
        let peerIP = h.peerIP, handOff = h.handOff
        // Set once the bootstrap's initializer runs: from then on the channel owns the
        // socket and gives the listener's place back when it closes.
        let made = NIOLockedValueBox<AcceptedConnection<Connection>?>(nil)
        let owned = NIOLockedValueBox(false)
        // (No options of its own: the bootstrap's one default, TCP_NODELAY, is set on the
        // socket already, so the only failure before the initializer is the channel's
        // making, which leaves the descriptor to us.)
        ClientBootstrap(group: listener.group)
            .channelInitializer { channel in
                owned.withLockedValue { $0 = true }
                channel.closeFuture.whenComplete { _ in counter.release(peer: peerIP) }
                // Nothing read from the socket before the bytes the thread left are in.
                do {
                    try channel.pipeline.syncOperations.addHandler(HandedOverStart(h), position: .first)
                    try channel.syncOptions?.setOption(.autoRead, value: false)
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
                return listener.setUp(channel, peerIP: peerIP, configure: .guarded { try configure($0, handOff) })
                    .map { accepted in made.withLockedValue { $0 = accepted } }
            }
            .withConnectedSocket(h.fd)
            .whenComplete { [self] result in
                switch result {
                case let .success(channel):
                    // (The replies owed and the bytes left went in as it became active:
                    // `HandedOverStart`.)
                    channel.setOption(.autoRead, value: true).whenFailure { _ in channel.close(promise: nil) }
                    if let accepted = made.withLockedValue({ $0 }) { kept(accepted) }
                case let .failure(error):
                    if !owned.withLockedValue({ $0 }) {
                        // (Once it is, `HandedOverStart` holds the replies owed, and gives
                        // their hold back when the channel goes without becoming active.)
                        h.memory?.release(h.held)
                        // NIO never took the socket: it is closed here, its place given back.
                        Glibc.close(h.fd)
                        counter.release(peer: peerIP)
                    }
                    listener.refusals.warning(listener.logger, "\(listener.name): a connection handed to the event loops could not be set up: closed",
                                              peer: peerIP ?? "unix", metadata: ["listener": "\(listener.name)", "error": "\(error)"])
                }
                settled()
            }
    }

    /// Keeps `accepted`'s channel for the drain (told at once when it began) and gives it
    /// to `runThreaded`.
    private func kept(_ accepted: AcceptedConnection<Connection>) {
        let channel = accepted.channel, id = ObjectIdentifier(channel)
        let (stopping, aborting) = state.withLockedValue { s in
            s.channels[id] = channel
            return (s.stopping, s.aborting)
        }
        channel.closeFuture.whenComplete { [self] _ in
            _ = state.withLockedValue { $0.channels.removeValue(forKey: id) }
        }
        if aborting {
            channel.close(promise: nil)
        } else if stopping {
            channel.pipeline.syncOperations.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        }
        continuation.yield(accepted)
    }

    private func settled() {
        let finish = state.withLockedValue { s in
            s.pending -= 1
            return s.threadsDone && s.pending == 0
        }
        if finish { continuation.finish() }
    }

    /// The threads are done (none hands anything over any more): the stream ends once the
    /// hand-overs under way are set up.
    func threadsFinished() {
        let finish = state.withLockedValue { s in
            s.threadsDone = true
            return s.pending == 0
        }
        if finish { continuation.finish() }
    }

    /// Graceful (`abort` false): every channel handed over finishes what it has in flight
    /// and closes; abort: every one closes now.
    func stop(abort: Bool) {
        let channels = state.withLockedValue { s in
            s.stopping = true
            if abort { s.aborting = true }
            return Array(s.channels.values)
        }
        for channel in channels {
            if abort {
                channel.close(promise: nil)
            } else {
                channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
            }
        }
    }
}

/// First in a handed-over connection's pipeline until the channel is active; then, before
/// the event loop reads anything of the socket (the client's end included, which it may
/// have sent right after the request the thread left: seen first, it would close the
/// channel or end its input before that request), writes the replies owed and passes the
/// bytes left on as a read, and leaves. Holds the replies' part of the reply budget
/// (`HandedOver.held`) until the socket has taken them, or gives it back if the channel
/// goes without becoming active.
private final class HandedOverStart<HandOff: Sendable>: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    private var h: HandedOver<HandOff>?

    init(_ h: HandedOver<HandOff>) {
        self.h = h
    }

    func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
        guard let h else { return }
        self.h = nil
        let channel = context.channel, ops = context.pipeline.syncOperations
        let owedBytes = h.owed.readableBytes
        let large = owedBytes >= ReplyMemory.largeReply ? owedBytes : 0
        h.memory?.change(from: h.held, to: large)
        if owedBytes > 0 {
            let memory = h.memory
            channel.writeAndFlush(h.owed).whenComplete { _ in memory?.release(large) }
        }
        if h.leftover.readableBytes > 0 {
            ops.fireChannelRead(NIOAny(h.leftover))
            ops.fireChannelReadComplete()
            if let since = h.requestSince,
               let guardContext = try? ops.context(name: ConnectionGuard.handlerName),
               let guarded = guardContext.handler as? ConnectionGuard {
                guarded.watch.requestBegan(at: since, guardContext)
            }
        }
        ops.removeHandler(self, promise: nil)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        if let h {
            self.h = nil
            h.memory?.release(h.held)
        }
    }
}
