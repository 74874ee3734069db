import KTFormats
import NIOCore

/// The replication frame decoder with a cap on message size: a corrupt size field must
/// not make the bridge buffer gigabytes waiting for a frame that never ends.
public struct BoundedReplicationDecoder: ByteToMessageDecoder {
    public typealias InboundOut = ReplicationFrame
    var inner: ReplicationFrameDecoder
    public let maxMessageBytes: Int
    /// Bytes consumed so far, for error offsets.
    public private(set) var consumed = 0

    public init(expectAcceptance: Bool = true, maxMessageBytes: Int) {
        inner = ReplicationFrameDecoder(expectAcceptance: expectAcceptance)
        self.maxMessageBytes = maxMessageBytes
    }

    /// Takes one whole frame off `buffer`, nil when more bytes are needed.
    public mutating func next(_ buffer: inout ByteBuffer) throws -> ReplicationFrame? {
        if !inner.awaitingAcceptance, buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) == KTBinaryMagic.replication,
           let size = buffer.getInteger(at: buffer.readerIndex + 9, as: UInt32.self), Int(size) > maxMessageBytes {
            throw ReplicationStreamError(found: KTBinaryMagic.replication, offset: consumed)
                .withReason("update frame at stream offset \(consumed) claims a \(size)-byte message, over the \(maxMessageBytes)-byte limit")
        }
        let before = buffer.readableBytes
        let frame = try inner.next(&buffer)
        consumed += before - buffer.readableBytes
        return frame
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try next(&buffer) else { return .needMoreData }
        context.fireChannelRead(wrapInboundOut(frame))
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try decode(context: context, buffer: &buffer)
    }
}

/// A damaged replication stream, with where it went wrong.
public struct DamagedStreamError: Error, CustomStringConvertible, Sendable {
    public let offset: Int
    public let reason: String
    public var description: String { reason }
}

extension ReplicationStreamError {
    func withReason(_ reason: String) -> DamagedStreamError {
        DamagedStreamError(offset: offset, reason: reason)
    }
}
