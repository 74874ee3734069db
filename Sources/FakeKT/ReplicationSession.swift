import KTFormats
import Logging
import NIOCore

/// One replication client, served the way ktserver serves it: the acceptance byte, then
/// every logged update with a timestamp greater than the requested one (except those from
/// the client's own sid), and when there is nothing to send a heartbeat stamped one second
/// behind the clock (never behind the last timestamp sent) that the client must answer
/// with `0xB1` before the server looks again 0.1 s later.
///
/// Lives on its channel's event loop; the fault plan is read before each frame.
final class ReplicationSession {
    static let idleInterval = TimeAmount.milliseconds(100)
    static let batchSize = 512
    static let skipLimit = 256

    private let core: FakeKTCore
    private let request: ReplicationRequest
    private let context: ChannelHandlerContext
    private let logger: Logger
    private var nextIndex = 0
    private var lastSent: UInt64 = 0
    private var skipped = 0
    private var frames = 0
    private var awaitingAck = false
    private var waitingForWritability = false
    private var stopped = false
    private var scheduled: Scheduled<Void>?

    init(core: FakeKTCore, request: ReplicationRequest, context: ChannelHandlerContext) {
        self.core = core
        self.request = request
        self.context = context
        var logger = core.logger
        logger[metadataKey: "peer"] = "\(context.channel.remoteAddress?.description ?? "?")"
        logger[metadataKey: "client-sid"] = "\(request.sid)"
        self.logger = logger
    }

    func start() {
        let ts = request.timestamp
        nextIndex = core.withStore { $0.logIndex(after: ts) }
        logger.info("a slave was connected", metadata: ["ts": "\(ts)"])
        context.writeAndFlush(NIOAny(context.channel.allocator.buffer(bytes: ReplicationFrame.accepted.encoded())), promise: nil)
        pump()
    }

    func stop() {
        guard !stopped else { return }
        stopped = true
        scheduled?.cancel()
        logger.info("a slave was disconnected")
    }

    func resume() {
        guard waitingForWritability else { return }
        waitingForWritability = false
        pump()
    }

    /// Bytes from the client: only heartbeat acknowledgements are allowed.
    func received(_ bytes: inout ByteBuffer, context: ChannelHandlerContext) {
        while let b = bytes.readInteger(as: UInt8.self) {
            guard awaitingAck, b == KTBinaryMagic.replication else {
                core.reportMalformed("unexpected byte 0x\(String(b, radix: 16)) on a replication connection",
                                     peer: context.channel.remoteAddress?.description ?? "?")
                close()
                return
            }
            awaitingAck = false
            schedule(after: Self.idleInterval)
        }
    }

    private func schedule(after delay: TimeAmount) {
        guard !stopped else { return }
        scheduled?.cancel()
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        scheduled = context.eventLoop.scheduleTask(in: delay) { bound.value.pump() }
    }

    private func close() {
        stop()
        context.close(promise: nil)
    }

    /// Whether `record` is to be left out for this client.
    private func skips(_ record: ULogFile.Record) -> Bool {
        let m = record.message
        let sid = m.count >= 2 ? UInt16(m[0]) << 8 | UInt16(m[1]) : 0
        if request.flags & KTBinaryMagic.whiteSIDFlag != 0 { return sid != request.sid }
        return sid == request.sid
    }

    private func pump() {
        guard !stopped, !awaitingAck else { return }
        guard context.channel.isWritable else {
            waitingForWritability = true
            return
        }
        let faults = core.faults.withLockedValue { $0 }
        let index = nextIndex
        let limit = faults.frameDelayMillis > 0 ? 1 : Self.batchSize
        let batch = core.withStore { $0.logSlice(from: index, limit: limit) }
        if batch.isEmpty {
            if faults.stopHeartbeats {
                schedule(after: Self.idleInterval)
                return
            }
            var ts = KTClock.pure(nowMillis: core.nowMillis())
            if ts > 1_000_000_000 { ts -= 1_000_000_000 }
            ts = max(ts, lastSent)
            awaitingAck = true
            send(.heartbeat(timestamp: ts), faults)
            context.flush()
            return
        }
        var sentAny = false
        for record in batch {
            guard !stopped else { return }
            nextIndex += 1
            if skips(record) {
                skipped += 1
                if skipped >= Self.skipLimit {
                    skipped = 0
                    send(.update(timestamp: record.timestamp, message: []), faults)
                    sentAny = true
                }
            } else {
                skipped = 0
                send(.update(timestamp: record.timestamp, message: record.message), faults)
                sentAny = true
            }
            lastSent = max(lastSent, record.timestamp)
        }
        if sentAny { context.flush() }
        if faults.frameDelayMillis > 0 {
            schedule(after: .milliseconds(Int64(faults.frameDelayMillis)))
        } else {
            let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
            context.eventLoop.execute { bound.value.pump() }
        }
    }

    /// Writes one frame, applying the fault plan.
    private func send(_ frame: ReplicationFrame, _ faults: FaultPlan) {
        guard !stopped else { return }
        frames += 1
        var bytes = frame.encoded()
        if faults.corruptFrame == frames {
            bytes[0] = 0xEE
            logger.notice("fault: corrupted a frame", metadata: ["frame": "\(frames)"])
        }
        if faults.cutFrame == frames {
            let half = max(1, bytes.count / 2)
            logger.notice("fault: cut a frame", metadata: ["frame": "\(frames)"])
            context.writeAndFlush(NIOAny(context.channel.allocator.buffer(bytes: bytes.prefix(half))), promise: nil)
            close()
            return
        }
        context.write(NIOAny(context.channel.allocator.buffer(bytes: bytes)), promise: nil)
        if let n = faults.closeAfterFrames, frames >= n {
            logger.notice("fault: closing after frames", metadata: ["frames": "\(frames)"])
            context.flush()
            close()
        }
    }
}
