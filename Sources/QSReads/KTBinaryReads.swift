import KTFormats
import NIOConcurrencyHelpers
import NIOCore
import QSBytes
import QSNet

/// What a binary connection on a read node's KT port asks.
public enum KTBinaryRead: Sendable, Equatable {
    /// A whole `get_bulk`: its flags, its key count and its keys' bytes as they came
    /// (`db:u16 ksiz:u32 key`, each), walked where the read runs (off the event loop);
    /// `held`: what it holds of the port's budget (`KTBinaryShare`) until it is answered.
    case getBulk(flags: UInt32, count: UInt32, keys: ByteBuffer, held: Int)
    /// A request a read node does not serve (a write, `play_script`, replication), known
    /// from its first bytes: refused with KT's error reply, the connection closed.
    case refused(KTBinaryRequest)
    /// A `get_bulk` the port's budget has no room for (`whole`: one that could never fit):
    /// refused with KT's error reply, the connection closed.
    case overBudget(bytes: Int, whole: Bool)
}

/// One binary connection's share of the KT port's budget for request bodies
/// (`PendingBytes`, `--kt-max-pending-bytes`): the bytes of a `get_bulk` still arriving,
/// then a whole one's bytes and what answering it builds, until its answer is written.
/// Everything still held is given back when the connection ends.
final class KTBinaryShare: Sendable {
    let pending: PendingBytes
    private let held = NIOLockedValueBox(0)

    init(_ pending: PendingBytes) {
        self.pending = pending
    }

    func reserve(_ n: Int) -> Bool {
        guard pending.reserve(n) else { return false }
        held.withLockedValue { $0 += n }
        return true
    }

    /// Gives back `n` of what this connection holds (a request answered).
    func release(_ n: Int) {
        let n = held.withLockedValue { held in
            let n = min(n, held)
            held -= n
            return n
        }
        pending.release(n)
    }

    func releaseAll() {
        let n = held.withLockedValue { n in
            defer { n = 0 }
            return n
        }
        pending.release(n)
    }
}

/// A read node's binary decoder (KT's port): `get_bulk` is walked as it arrives, without
/// allocating, and handed on whole as its bytes (`KTBinaryRead.getBulk`); every other
/// request is refused from its magic and flags alone, so a large write is refused before it
/// is read. A key over KT's limit is refused as soon as its size arrives.
///
/// With a `share`, a `get_bulk`'s bytes are held against the port's budget as they come,
/// and once it is whole what answering it builds too (`keyBytes` a key) until the session
/// has answered it: held only while arriving, a crowd of connections each sending requests
/// of millions of short keys made a node hold gigabytes of parsed keys.
public struct KTBinaryReadDecoder: NIOSingleStepByteToMessageDecoder, Sendable {
    public typealias InboundOut = KTBinaryRead
    /// What answering a request holds a key beyond its bytes: its entry in the table that
    /// answers each key once (`KTBinaryKeys`, a `[Int: Int]` of at most 2.7 buckets a key,
    /// 16 bytes each).
    static let keyBytes = 48

    let share: KTBinaryShare?

    init(share: KTBinaryShare?) {
        self.share = share
    }

    /// Without a budget (the fuzz target's and tests' decoder).
    public init() {
        share = nil
    }

    /// A request was refused early: what follows it is discarded (the connection closes).
    private var discarding = false
    /// How far the `get_bulk` arriving has been walked: the offset (from the reader index)
    /// of its next key and the keys left. A request declares no total length, so without
    /// this each arriving piece would walk it again from the start: quadratic in its size.
    private var walked: (offset: Int, keysLeft: UInt32)?
    /// Bytes arriving reserved from `share` and not yet handed to a whole request.
    private var reserved = 0

    public mutating func decode(buffer: inout ByteBuffer) throws(DecodeError) -> KTBinaryRead? {
        if discarding {
            buffer.moveReaderIndex(to: buffer.writerIndex)
            return nil
        }
        if let refused = try KTBinaryRequestDecoder.refusedEarly(buffer) {
            return discard(&buffer, .refused(refused))
        }
        guard buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) == KTBinaryMagic.getBulk else {
            // Replication (its header is small) or an unknown magic (`next` throws).
            return try KTBinaryRequestDecoder.next(&buffer).map { .refused($0) }
        }
        if let share, buffer.readableBytes > reserved {
            // Everything held for it so far, a key still arriving included.
            guard share.reserve(buffer.readableBytes - reserved) else {
                return discard(&buffer, .overBudget(bytes: buffer.readableBytes, whole: buffer.readableBytes > share.pending.limit))
            }
            reserved = buffer.readableBytes
        }
        guard let length = try walkGetBulk(buffer) else { return nil }
        walked = nil
        let flags = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt32.self)!
        let count = buffer.getInteger(at: buffer.readerIndex + 5, as: UInt32.self)!
        var held = 0
        if let share {
            // The request's bytes, reserved as they came, are handed to it; what answering
            // it builds is taken now.
            let builds = Int(count) * Self.keyBytes
            guard length + builds <= share.pending.limit, share.reserve(builds) else {
                return discard(&buffer, .overBudget(bytes: length + builds, whole: length + builds > share.pending.limit))
            }
            reserved -= length
            held = length + builds
        }
        buffer.moveReaderIndex(forwardBy: 9)
        let keys = buffer.readSlice(length: length - 9)!
        return .getBulk(flags: flags, count: count, keys: keys, held: held)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws(DecodeError) -> KTBinaryRead? {
        try decode(buffer: &buffer)
    }

    /// `refusal`, everything after it discarded (the connection closes after it).
    private mutating func discard(_ buffer: inout ByteBuffer, _ refusal: KTBinaryRead) -> KTBinaryRead {
        discarding = true
        buffer.moveReaderIndex(to: buffer.writerIndex)
        return refusal
    }

    /// Walks the `get_bulk` at the buffer's reader index from where the last call stopped,
    /// without allocating: its length once it is whole, nil while more must come.
    private mutating func walkGetBulk(_ buffer: ByteBuffer) throws(DecodeError) -> Int? {
        let base = buffer.readerIndex, end = buffer.writerIndex
        var (offset, left) = walked ?? (0, 0)
        if walked == nil {
            // magic, flags, key count
            guard end - base >= 9, let count = buffer.getInteger(at: base + 5, as: UInt32.self) else { return nil }
            (offset, left) = (9, count)
        }
        defer { walked = (offset, left) }
        while left > 0 {
            // db:u16 ksiz:u32 key
            guard end - base - offset >= 6, let ksiz = buffer.getInteger(at: base + offset + 2, as: UInt32.self) else { return nil }
            guard ksiz <= KTBinaryMagic.dataMaxSize else {
                throw DecodeError(offset: offset + 2, reason: "key size \(ksiz) over \(KTBinaryMagic.dataMaxSize)", kind: .tooLarge)
            }
            guard end - base - offset - 6 >= Int(ksiz) else { return nil }
            offset += 6 + Int(ksiz)
            left -= 1
        }
        return offset
    }
}

/// The keys of a whole `get_bulk` as they came (`KTBinaryRead.getBulk`), each once: a key
/// named again is skipped, as `/rpc/get_bulk` answers (one key named many times in a small
/// request would otherwise build a reply of gigabytes from a large value). Keys are told
/// apart by a hash seeded per process, checked against the bytes of the key first seen with
/// it (two keys sharing a hash are both answered).
public struct KTBinaryKeys: Sendable {
    let keys: ByteBuffer
    let count: UInt32

    /// The keys of a whole `get_bulk` (`KTBinaryRead.getBulk`).
    public init(keys: ByteBuffer, count: UInt32) {
        self.keys = keys
        self.count = count
    }

    /// Calls `body` with each key's database and bytes, in request order, each key once.
    public func forEachOnce(_ body: (UInt16, UnsafeRawBufferPointer) throws -> Void) rethrows {
        try keys.withUnsafeReadableBytes { bytes in
            // `db:u16 ksiz:u32 key` at `offset`, as the decoder walked it.
            func key(at offset: Int) -> (db: UInt16, key: UnsafeRawBufferPointer) {
                let db = UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
                let size = Int(bytes[offset + 2]) << 24 | Int(bytes[offset + 3]) << 16 | Int(bytes[offset + 4]) << 8 | Int(bytes[offset + 5])
                return (db, UnsafeRawBufferPointer(rebasing: bytes[offset + 6 ..< offset + 6 + size]))
            }
            var seen = [Int: Int]()
            if count > 1 { seen.reserveCapacity(Int(count)) }
            var offset = 0
            for _ in 0..<count {
                let (db, k) = key(at: offset)
                let at = offset
                offset += 6 + k.count
                if count > 1 {
                    var hasher = Hasher()
                    hasher.combine(db)
                    hasher.combine(bytes: k)
                    let hash = hasher.finalize()
                    if let first = seen[hash] {
                        let earlier = key(at: first)
                        if earlier.db == db, earlier.key.elementsEqual(k) { continue }
                    } else {
                        seen[hash] = at
                    }
                }
                try body(db, k)
            }
        }
    }
}
