import NIOCore
import QSBytes

/// Magic bytes of KT's binary protocol (`ktremotedb.h`).
public enum KTBinaryMagic {
    /// A heartbeat in the replication feed (no operation).
    public static let nop: UInt8 = 0xB0
    public static let replication: UInt8 = 0xB1
    public static let playScript: UInt8 = 0xB4
    public static let setBulk: UInt8 = 0xB8
    public static let removeBulk: UInt8 = 0xB9
    public static let getBulk: UInt8 = 0xBA
    public static let error: UInt8 = 0xBF
    /// The flag bit of bulk requests that asks for no reply.
    public static let noReplyFlag: UInt32 = 1 << 0
    /// The flag bit of a replication request that asks only for the given sid's updates.
    public static let whiteSIDFlag: UInt32 = 1 << 0
    /// The largest key or value KT accepts in a binary request.
    public static let dataMaxSize: UInt32 = 1 << 28
}

/// A replication client's request: `0xB1 flags:u32 ts:u64 sid:u16`.
///
/// The server answers with the updates whose timestamp is greater than `timestamp`, leaving
/// out those whose origin sid is `sid` (or, with the white-sid flag, all others).
public struct ReplicationRequest: Sendable, Hashable {
    public static let size = 15
    public var flags: UInt32
    public var timestamp: UInt64
    public var sid: UInt16

    public init(flags: UInt32 = 0, timestamp: UInt64, sid: UInt16) {
        self.flags = flags
        self.timestamp = timestamp
        self.sid = sid
    }

    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: Self.size)
        w.writeU8(KTBinaryMagic.replication)
        w.writeU32(flags)
        w.writeU64(timestamp)
        w.writeU16(sid)
        return w.bytes
    }
}

/// What a KT server sends on a replication connection.
public enum ReplicationFrame: Sendable, Hashable {
    /// The one-byte `0xB1` that accepts the request.
    case accepted
    /// The one-byte `0xBF`: the server refuses (it has no update log).
    case refused
    /// `0xB1 ts:u64 size:u32 message`; an empty message marks a position without a change.
    case update(timestamp: UInt64, message: [UInt8])
    /// `0xB0 ts:u64`; the client must answer with one byte `0xB1`.
    case heartbeat(timestamp: UInt64)

    public func encoded() -> [UInt8] {
        switch self {
        case .accepted: return [KTBinaryMagic.replication]
        case .refused: return [KTBinaryMagic.error]
        case .update(let ts, let message):
            var w = ByteWriter(capacity: 13 + message.count)
            w.writeU8(KTBinaryMagic.replication)
            w.writeU64(ts)
            w.writeU32(UInt32(message.count))
            w.writeBytes(message)
            return w.bytes
        case .heartbeat(let ts):
            var w = ByteWriter(capacity: 9)
            w.writeU8(KTBinaryMagic.nop)
            w.writeU64(ts)
            return w.bytes
        }
    }
}

/// Decodes the server side of a replication connection into `ReplicationFrame`s: first the
/// one-byte acceptance (or refusal), then update and heartbeat frames. The same decoder
/// reads a live connection (`ByteToMessageHandler`) and a recorded stream (`stream.bin`,
/// a `qsctl record` capture) fed in chunks through `NIOSingleStepByteToMessageProcessor`.
///
/// Errors are `DecodeError`s naming the stream offset of the frame: a byte that starts no
/// frame, an update claiming a message over `maxMessageBytes` (refused as soon as its size
/// arrives, before buffering it), or, at the end of the stream, a cut frame.
public struct ReplicationFrameDecoder: NIOSingleStepByteToMessageDecoder, Sendable {
    public typealias InboundOut = ReplicationFrame

    /// Whether the acceptance byte is still to come.
    public private(set) var awaitingAcceptance: Bool
    public let maxMessageBytes: Int
    /// Bytes consumed so far: the stream offset of the next frame.
    public private(set) var streamOffset = 0

    /// - Parameter expectAcceptance: `false` to decode a stream whose acceptance byte has
    ///   already been consumed.
    public init(expectAcceptance: Bool = true, maxMessageBytes: Int = 64 << 20) {
        self.awaitingAcceptance = expectAcceptance
        self.maxMessageBytes = maxMessageBytes
    }

    /// Takes one whole frame off `buffer`, or returns `nil` (consuming nothing) if the frame
    /// is not complete yet.
    public mutating func decode(buffer: inout ByteBuffer) throws(DecodeError) -> ReplicationFrame? {
        let acceptance = awaitingAcceptance, limit = maxMessageBytes
        // The common frame, a whole update within the limit, read with NIO's own integer
        // reads; anything else (and every error) takes the general path below.
        if !acceptance, buffer.readableBytes >= 13, let at = Optional(buffer.readerIndex),
           buffer.getInteger(at: at, as: UInt8.self) == KTBinaryMagic.replication,
           let ts = buffer.getInteger(at: at + 1, as: UInt64.self),
           let size = buffer.getInteger(at: at + 9, as: UInt32.self).map(Int.init),
           size <= limit, buffer.readableBytes - 13 >= size,
           let message = buffer.getBytes(at: at + 13, length: size) {
            buffer.moveReaderIndex(forwardBy: 13 + size)
            streamOffset += 13 + size
            return .update(timestamp: ts, message: message)
        }
        guard let (frame, length) = try ByteReader.prefix(of: buffer.readableBytesView, base: streamOffset, { r throws(DecodeError) in
            let start = r.offset
            let magic = try r.readU8("frame")
            if acceptance {
                switch magic {
                case KTBinaryMagic.replication: return ReplicationFrame.accepted
                case KTBinaryMagic.error: return .refused
                default: throw .badMagic(magic, expected: "replication acceptance 0xB1 or refusal 0xBF", offset: start)
                }
            }
            switch magic {
            case KTBinaryMagic.replication:
                let ts = try r.readU64("update timestamp")
                let size = Int(try r.readU32("update size"))
                guard size <= limit else {
                    throw DecodeError(offset: start, reason: "the update at timestamp \(ts) is a \(size)-byte message, over the \(limit)-byte limit",
                                      kind: .tooLarge)
                }
                return .update(timestamp: ts, message: try r.readBytes(size, "update message"))
            case KTBinaryMagic.nop:
                return .heartbeat(timestamp: try r.readU64("heartbeat timestamp"))
            default:
                throw .badMagic(magic, expected: "replication frame 0xB1 or 0xB0", offset: start)
            }
        }) else { return nil }
        awaitingAcceptance = false
        buffer.moveReaderIndex(forwardBy: length)
        streamOffset += length
        return frame
    }

    /// At the end of the stream: the last whole frame, or a truncation error when the
    /// stream ends inside one.
    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws(DecodeError) -> ReplicationFrame? {
        if let frame = try decode(buffer: &buffer) { return frame }
        if buffer.readableBytes > 0 { throw .endsInside("frame", offset: streamOffset, present: buffer.readableBytes) }
        return nil
    }
}
