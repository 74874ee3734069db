import Metrics
import NIOCore

/// The bytes of large read replies a node holds for clients that have not read them yet
/// (values of `largeReply` bytes or more, written to a connection and not yet taken by its
/// socket), against one budget shared by every read port. A reply that would pass it is
/// refused when it is asked for (memcached `SERVER_ERROR out of memory writing get
/// response`, KT HTTP 503, KT binary's error reply, the write port's reads `busy`) instead
/// of built: each connection holds
/// at most one flush of replies past its high-water mark, but a crowd of connections each
/// asking for a large value and reading nothing held value × connections (100 connections
/// and a 20 MB value: 2 GB). One reply larger than the whole budget is still served while
/// nothing else is held, so no value is unservable. Smaller replies are not counted: the
/// connection cap and the high-water mark bound them.
public final class ReplyMemory: Sendable {
    /// Replies of at least this many bytes are counted (the flush size of the read ports).
    public static let largeReply = 64 << 10
    /// A reply buffer larger than this is not kept for the connection's next replies.
    public static let keptBufferBytes = 1 << 20
    /// `--read-reply-memory`'s default.
    public static let defaultLimit = 256 << 20

    let held: PendingBytes
    public var limit: Int { held.limit }
    /// Bytes held now.
    public var inUse: Int { held.inUse }

    public init(limit: Int, gauge: Gauge? = nil) {
        held = PendingBytes(limit: limit, gauge: gauge)
    }

    /// A node's one budget, its bytes held exported as `qs_read_reply_bytes_held`.
    public static func exported(limit: Int) -> ReplyMemory {
        ReplyMemory(limit: limit, gauge: Gauge(label: "qs_read_reply_bytes_held"))
    }

    /// Counts `bytes` written to a connection as held until `release`.
    public func hold(_ bytes: Int) { held.force(bytes) }

    /// Holds `bytes` if the budget has room for them (or nothing else is held), the check and
    /// the hold in one step: for answers built off the event loops, many at once, each of
    /// which must see the others'. False: nothing held.
    public func tryHold(_ bytes: Int) -> Bool { held.reserveAlone(bytes) }

    /// Holds `bytes` more of a reply gathered of several values (KT's `get_bulk`, through
    /// `GatheredReply`; a multi-key memcached `get`), `values` of them so far: its first
    /// value whatever its size while nothing else is held (no single value is unservable),
    /// more only while the budget has room; the check and the hold in one step, so replies
    /// built at once on many threads each see the others' (checked only, each could pass
    /// the budget while the others were being built). The hold stays until the reply is
    /// written. False: nothing held.
    public func tryHoldGathered(_ bytes: Int, values: Int) -> Bool {
        values <= 1 ? held.reserveAlone(bytes) : held.reserve(bytes)
    }

    public func release(_ bytes: Int) { held.release(bytes) }

    /// What is held for a reply goes from `from` bytes to `to`: the difference taken or
    /// given back, never both (a hold handed on from whoever built a reply to whoever
    /// writes it is never given back in between, where another reply could pass the check).
    @inline(__always)
    public func change(from: Int, to: Int) {
        if to > from { held.force(to - from) } else if from > to { held.release(from - to) }
    }
}

/// A reply gathered value by value (KT's `get_bulk`), its bytes held against a
/// `ReplyMemory` as it grows once it is large: the check and the hold in one step as each
/// value is added (`tryHoldGathered`). Whoever gathers gives the hold back (`release`) once
/// the reply is written, or refused.
public struct GatheredReply: Sendable {
    public let memory: ReplyMemory
    /// The reply's bytes so far (what it starts with, then each value's share).
    public private(set) var bytes: Int
    public private(set) var values = 0
    /// What is held of `memory` now: `bytes` once the reply is large, 0 before.
    public private(set) var held = 0

    public init(memory: ReplyMemory, startingAt bytes: Int = 0) {
        self.memory = memory
        self.bytes = bytes
    }

    /// Adds a value of `n` bytes (with what frames it); false when the budget has no room
    /// for the reply grown so (nothing more held: the reply is to be refused).
    public mutating func add(_ n: Int) -> Bool {
        let total = bytes + n
        if total >= ReplyMemory.largeReply {
            guard memory.tryHoldGathered(total - held, values: values + 1) else { return false }
            held = total
        }
        bytes = total
        values += 1
        return true
    }

    /// Gives back what is held.
    public mutating func release() {
        guard held > 0 else { return }
        memory.release(held)
        held = 0
    }
}

extension ChannelHandlerContext {
    /// Writes and flushes the replies gathered in `out` (and closes the channel after them,
    /// `thenClose`, lingering: `LingeringClose`), then starts `out` over; false when there was nothing to do. `held`:
    /// what `out`'s replies took of `memory` as they were built (`ReplyMemory.tryHold…`),
    /// handed on to the write and 0 after. Without a close there is no promise unless the
    /// write is large: then `memory` holds its bytes until the socket has taken them.
    /// (memcached's and the KT fast path's one way out.)
    @inline(__always)
    public func writeReplies(_ out: inout ByteBuffer, held: inout Int, thenClose: Bool, memory: ReplyMemory) -> Bool {
        let bytes = out.readableBytes
        guard bytes > 0 || thenClose else {
            memory.change(from: held, to: 0)
            held = 0
            return false
        }
        let large = bytes >= ReplyMemory.largeReply
        if large || held > 0 { memory.change(from: held, to: large ? bytes : 0) }
        held = 0
        if large || thenClose {
            // (With nothing to write, an empty write still completes after the writes before it.)
            let written = writeAndFlush(NIOAny(out))
            if large { written.whenComplete { _ in memory.release(bytes) } }
            if thenClose { LingeringClose.close(self, after: written) }
        } else {
            writeAndFlush(NIOAny(out), promise: nil)
        }
        // Written already unless the socket is full: then the buffer stays with the write
        // and `clear` starts a new one. One grown past 1 MiB is let go (a cleared buffer
        // keeps its capacity: an idle connection would hold the largest reply it ever sent).
        if out.capacity > ReplyMemory.keptBufferBytes { out = ByteBuffer() } else { out.clear() }
        return true
    }
}
