import Logging
import NIOCore
import QSBytes
import QSModel
import QSNet
import QSWire

/// Serves the QS write protocol on one connection: decodes each frame as it arrives (so a
/// pipelining client's next batch is decoded while the store commits the one before),
/// checks the write token, runs the request (its store work on the store's threads, never
/// on the event loop) and answers in order. Requests are handled
/// one at a time per connection; reading pauses while `maxQueued` frames wait, so a client
/// that pipelines faster than the store commits cannot grow the node's memory, and no
/// request is run while the socket does not take the answers before it, so a client that
/// pipelines reads (`Get` of large values) and reads no answer holds one answer past the
/// channel's high-water mark, not one per request; and a read's large answer takes its
/// bytes of the budget the read ports share (`--read-reply-memory`) as it is built, until
/// the socket has taken it, so a crowd of such connections cannot hold answer × connections.
final class WriteProtocolHandler: ChannelDuplexHandler {
    typealias InboundIn = Frame
    typealias OutboundIn = Frame
    typealias OutboundOut = Frame

    let core: NodeCore
    let logger: Logger
    let maxQueued = 32

    private var queue = CircularBuffer<Result<Request, any Error>>()
    private var busy = false
    private var quiescing = false
    private var closing = false
    private var readPending = false
    /// Set once the peer is gone: what it pipelined and nobody will read the answer to is
    /// dropped, not run (it was never acknowledged).
    private var inactive = false
    private var peer = "unknown"
    private var peerIsLocal = false
    /// Whether this connection may read: a local peer, a node without tokens, or a token
    /// presented (`auth`, or a write, hello or role change that passed its gate).
    private var readsAllowed = false
    /// Whether this connection presented one of the node's tokens: its large reads are
    /// counted against the reply budget, never refused (`AnswerReservation`).
    private var tokenPresented = false
    /// Set once the decoder refused a frame: its answer waits in `queue` behind those owed.
    private var refusedFrame = false
    /// Set once the connection carries a subscription or a snapshot.
    private var stream: Task<Void, Never>?

    /// The connection's share of the port's budget for frames still arriving: nothing it
    /// sends is held once it has presented a token.
    private let arriving: ArrivingFrames?

    init(core: NodeCore, logger: Logger, arriving: ArrivingFrames? = nil) {
        self.core = core
        self.logger = logger
        self.arriving = arriving
    }

    func channelActive(context: ChannelHandlerContext) {
        peer = context.remoteAddress?.peerDescription ?? context.channel.localAddress?.peerDescription ?? "unknown"
        peerIsLocal = (context.remoteAddress ?? context.channel.localAddress)?.isLocal ?? false
        readsAllowed = core.readsOpen(local: peerIsLocal)
        core.metrics.connections.increment()
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        inactive = true
        queue.removeAll()
        stream?.cancel()
        core.writers.gone(peer: peer)
        core.metrics.connections.decrement()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !closing else { return }
        if stream != nil {
            // A streaming connection carries nothing more from the client.
            refuse(context: context, code: .invalidRequest, message: "no request is accepted on a streaming connection",
                   error: DecodeErrorNote("request after subscribe/snapshot"))
            return
        }
        let frame = unwrapInboundIn(data)
        queue.append(Result { try Request.decode(frame) })
        processNext(context: context)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable && stream == nil {
            processNext(context: context)
            if readPending && queue.count < maxQueued {
                readPending = false
                context.read()
            }
        }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        // Nothing more is read while the answers before are not taken (a frame can be 64 MiB)
        // or `maxQueued` frames wait; a stream only writes.
        if queue.count >= maxQueued || (stream == nil && !context.channel.isWritable) {
            readPending = true
        } else {
            context.read()
        }
    }

    private func processNext(context: ChannelHandlerContext) {
        guard !busy, !closing, !inactive else { return }
        guard !queue.isEmpty else {
            if quiescing { context.close(promise: nil) }
            return
        }
        // Resumed by `channelWritabilityChanged` once the peer takes what was answered.
        guard context.channel.isWritable else { return }
        let decoded = queue.removeFirst()
        if readPending && queue.count < maxQueued {
            readPending = false
            context.read()
        }
        let request: Request
        do {
            request = try decoded.get()
        } catch let error as DecodeError where error.kind == .refused(code: ErrorCode.damaged.rawValue) {
            // A checked write damaged on the way: nothing applied, the writer sends it again.
            core.metrics.damagedFrames.increment()
            core.badInput.warning(logger, "damaged frame (its checksum does not match), closing connection", peer: peer, metadata: ["error": "\(error)"])
            queue.removeAll()
            reply(context: context, .error(.damaged, error.reason), thenClose: true)
            return
        } catch let refusal as FrameRefusal {
            refuseFrame(context: context, refusal.error)
            return
        } catch {
            refuse(context: context, code: .malformed, message: "malformed request: \(error)", error: error)
            return
        }
        if let denial = core.authorize(request, peer: peer, local: peerIsLocal, readsAllowed: readsAllowed,
                                       address: context.channel.localAddress?.peerDescription ?? "") {
            reply(context: context, denial, thenClose: true)
            return
        }
        if !tokenPresented && core.provesToken(request) {
            (readsAllowed, tokenPresented) = (true, true)
            arriving?.trust()
        }
        switch request {
        case let .subscribe(from, hash, _):
            startSubscription(context: context, from: from, hash: hash)
            return
        case .snapshot, .snapshotFrom:
            let channel = context.channel, core = self.core, logger = self.logger, peer = self.peer
            queue.removeAll()
            // A stream only sends: the peer's silence is no longer idleness (the write
            // timeout still closes a peer that stops reading).
            IdleTimeout.remove(from: context.pipeline.syncOperations)
            var resume: SnapshotResume?, resumable = false
            if case let .snapshotFrom(_, r) = request { (resume, resumable) = (r, true) }
            stream = Task { [resume, resumable] in
                await ReplicationStreams.snapshot(channel: channel, core: core, resume: resume, resumable: resumable, logger: logger, peer: peer)
            }
            return
        default:
            break
        }
        busy = true
        let core = self.core, peer = self.peer
        // A batch to a single root goes to the writer thread and back without a task.
        let loop = context.eventLoop
        let handler = NIOLoopBound(self, eventLoop: loop), bound = NIOLoopBound(context, eventLoop: loop)
        if core.handleBatchDirectly(request, peer: peer, on: loop, done: { response in
            handler.value.answered(context: bound.value, response)
        }) {
            return
        }
        let replies = AnswerReservation(memory: core.replyMemory, refuses: !tokenPresented)
        run(context: context, { await core.handle(request, peer: peer, replies: replies) }) { response in
            // A hello handled after the connection closed registered a writer nobody will
            // remove (status listed such ghosts for good): forget it now.
            if self.inactive, case .hello = request { self.core.writers.gone(peer: self.peer) }
            self.answered(context: context, response, reserved: replies.taken)
        }
    }

    private func answered(context: ChannelHandlerContext, _ response: Response, reserved: Int = 0) {
        busy = false
        reply(context: context, response, thenClose: false, reserved: reserved)
        processNext(context: context)
    }

    private func startSubscription(context: ChannelHandlerContext, from: UInt64, hash: [UInt8]) {
        busy = true
        queue.removeAll()
        let core = self.core, logger = self.logger, peer = self.peer, channel = context.channel
        run(context: context, { await core.checkSubscription(from: from, hash: hash, peer: peer) }) { refusal in
            self.busy = false
            if let refusal {
                self.reply(context: context, refusal, thenClose: true)
            } else {
                IdleTimeout.remove(from: context.pipeline.syncOperations)
                self.stream = Task {
                    await ReplicationStreams.subscription(channel: channel, core: core, from: from, logger: logger, peer: peer)
                }
            }
        }
    }

    /// Runs `work` off the event loop (the store's threads) and `then` back on it with its
    /// result. `work` cannot throw, so every request gets its answer: there is no failure
    /// to report.
    private func run<T: Sendable>(context: ChannelHandlerContext, _ work: @escaping @Sendable () async -> T,
                                  then: @escaping (T) -> Void) {
        let promise = context.eventLoop.makePromise(of: T.self)
        promise.completeWithTask(work)
        promise.futureResult.assumeIsolated().whenSuccess(then)
    }

    /// Writes `response`; a large one is held against the node's reply budget until the
    /// socket has taken it (`NodeCore.answerFrame`).
    private func reply(context: ChannelHandlerContext, _ response: Response, thenClose: Bool, reserved: Int = 0) {
        let (frame, held) = core.answerFrame(response, reserved: reserved)
        // Set before the write: a write failing at once (a reset peer) fires events back into
        // this handler, which must not start the next request queued.
        if thenClose { closing = true }
        guard thenClose || held > 0 else {
            context.writeAndFlush(wrapOutboundOut(frame), promise: nil)
            return
        }
        let written = context.writeAndFlush(wrapOutboundOut(frame))
        if held > 0 {
            let memory = core.replyMemory
            written.whenComplete { _ in memory.release(held) }
        }
        if thenClose {
            // A peer still sending (a frame over the limit, the rest of a refused one) reads
            // the refusal and then its end, not a reset.
            LingeringClose.close(context, after: written)
        }
    }

    /// A bad frame: error reply where the protocol allows, a counter, a log line, close.
    private func refuse(context: ChannelHandlerContext, code: ErrorCode, message: String, error: any Error) {
        core.metrics.badFrames.increment()
        core.badInput.warning(logger, "bad frame, closing connection", peer: peer, metadata: ["error": "\(error)"])
        queue.removeAll()
        reply(context: context, .error(code, message), thenClose: true)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if closing { return }
        if stream == nil, error is DecodeError || error is ByteToMessageDecoderError {
            // Answered in its turn, after the requests decoded before it: a refusal written at
            // once took the place of an answer still owed (a write applied read as refused,
            // busy because other connections filled the budget for arriving frames). Nothing
            // after it is decoded (what still comes is the decoder's to drop).
            guard !refusedFrame else { return }
            refusedFrame = true
            queue.append(.failure(FrameRefusal(error: error)))
            processNext(context: context)
            return
        }
        refuseFrame(context: context, error)
    }

    /// The answer to a frame the decoder refused (`errorCaught`): an error reply where the
    /// protocol allows, a counter, a log line, close.
    private func refuseFrame(context: ChannelHandlerContext, _ error: any Error) {
        if let frameError = error as? DecodeError, case let .refused(raw) = frameError.kind, let code = ErrorCode(rawValue: raw), code != .frameTooLarge {
            // A large frame refused from its first bytes: a write without the token (an
            // authentication failure, counted and logged as one) or to a replica.
            if code == .unauthorized {
                core.writeGate.refuse(peer: peer, why: "wrong or missing write token on a frame over 1 MiB")
            } else if code == .busy {
                // The port's budget for frames arriving without a token is full.
                core.metrics.arrivingRefusals.increment()
                core.badInput.warning(logger, "frame refused: the frames arriving without a token hold all --max-arriving-frame-bytes", peer: peer,
                                      metadata: ["held-bytes": "\(arriving?.held ?? 0)"])
            } else {
                core.badInput.warning(logger, "write refused", peer: peer, metadata: ["reason": "\(frameError.reason)"])
            }
            queue.removeAll()
            reply(context: context, .error(code, frameError.reason), thenClose: true)
        } else if let frameError = error as? DecodeError {
            let code: ErrorCode = frameError.kind == .tooLarge || frameError.kind == .refused(code: ErrorCode.frameTooLarge.rawValue) ? .frameTooLarge : .malformed
            refuse(context: context, code: code, message: "\(frameError)", error: error)
        } else if error is ByteToMessageDecoderError.PayloadTooLargeError {
            refuse(context: context, code: .frameTooLarge, message: "more bytes than the largest frame without a whole frame", error: error)
        } else if error is ByteToMessageDecoderError {
            refuse(context: context, code: .malformed, message: "malformed frame: \(error)", error: error)
        } else {
            core.badInput.log(logger, .info, "connection error", peer: peer, metadata: ["error": "\(error)"])
            context.close(promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            quiescing = true
            if stream != nil {
                stream?.cancel()
                context.close(promise: nil)
                return
            }
            if !busy && queue.isEmpty { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}

/// A frame the decoder refused, queued to be answered in its turn.
struct FrameRefusal: Error {
    let error: any Error
}

struct DecodeErrorNote: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
