import NIOCore

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
        var out: [UInt8] = [KTBinaryMagic.replication]
        BE.append(flags, 4, to: &out)
        BE.append(timestamp, 8, to: &out)
        BE.append(sid, 2, to: &out)
        return out
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
            var out: [UInt8] = [KTBinaryMagic.replication]
            out.reserveCapacity(13 + message.count)
            BE.append(ts, 8, to: &out)
            BE.append(UInt32(message.count), 4, to: &out)
            out.append(contentsOf: message)
            return out
        case .heartbeat(let ts):
            var out: [UInt8] = [KTBinaryMagic.nop]
            BE.append(ts, 8, to: &out)
            return out
        }
    }
}

/// A byte in the replication stream that starts no frame.
public struct ReplicationStreamError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The offending byte.
    public var found: UInt8
    /// Its offset from the first byte of the stream.
    public var offset: Int

    public init(found: UInt8, offset: Int) {
        self.found = found
        self.offset = offset
    }

    public var description: String {
        "bad replication frame magic 0x\(String(found, radix: 16)) at stream offset \(offset)"
    }
}

/// Decodes the server side of a replication connection into `ReplicationFrame`s: first the
/// one-byte acceptance (or refusal), then update and heartbeat frames.
public struct ReplicationFrameDecoder: ByteToMessageDecoder, Sendable {
    public typealias InboundOut = ReplicationFrame

    /// Whether the acceptance byte is still to come.
    public private(set) var awaitingAcceptance: Bool
    /// Bytes consumed so far, for error offsets.
    public private(set) var streamOffset = 0

    /// - Parameter expectAcceptance: `false` to decode a stream whose acceptance byte has
    ///   already been consumed.
    public init(expectAcceptance: Bool = true) {
        self.awaitingAcceptance = expectAcceptance
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try next(&buffer) else { return .needMoreData }
        context.fireChannelRead(wrapInboundOut(frame))
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try decode(context: context, buffer: &buffer)
    }

    /// Takes one whole frame off `buffer`, or returns `nil` (consuming nothing) if the frame
    /// is not complete yet.
    public mutating func next(_ buffer: inout ByteBuffer) throws(ReplicationStreamError) -> ReplicationFrame? {
        var cursor = ByteCursor(buffer)
        guard let magic = cursor.u8() else { return nil }
        let frame: ReplicationFrame
        if awaitingAcceptance {
            switch magic {
            case KTBinaryMagic.replication: frame = .accepted
            case KTBinaryMagic.error: frame = .refused
            default: throw ReplicationStreamError(found: magic, offset: streamOffset)
            }
            awaitingAcceptance = false
        } else {
            switch magic {
            case KTBinaryMagic.replication:
                guard let ts = cursor.u64(), let size = cursor.u32(),
                      let message = cursor.bytes(Int(size)) else { return nil }
                frame = .update(timestamp: ts, message: message)
            case KTBinaryMagic.nop:
                guard let ts = cursor.u64() else { return nil }
                frame = .heartbeat(timestamp: ts)
            default:
                throw ReplicationStreamError(found: magic, offset: streamOffset)
            }
        }
        buffer.moveReaderIndex(forwardBy: cursor.offset)
        streamOffset += cursor.offset
        return frame
    }
}
