import NIOCore

/// A QS protocol frame: `length:u32 type:u8 payload`, where `length` counts the type byte
/// and the payload (big endian).
public struct Frame: Sendable, Equatable {
    public var type: UInt8
    public var payload: [UInt8]

    public init(type: UInt8, payload: [UInt8]) {
        self.type = type
        self.payload = payload
    }
}

/// The default cap on a frame's length: 64 MiB.
public let defaultMaxFrameBytes = 64 << 20

public enum FrameError: Error, Sendable, Equatable, CustomStringConvertible {
    case tooLarge(length: Int, limit: Int)
    case empty
    /// The stream ended inside a frame.
    case truncated(have: Int)

    public var description: String {
        switch self {
        case let .tooLarge(length, limit): return "frame of \(length) bytes exceeds the limit of \(limit) bytes"
        case .empty: return "frame of length 0 has no type byte"
        case let .truncated(have): return "connection ended inside a frame (\(have) bytes of it received)"
        }
    }
}

/// Splits a byte stream into frames. Refuses (throws) a frame longer than `maxFrameBytes`
/// as soon as its length prefix arrives, before buffering it.
public struct FrameDecoder: ByteToMessageDecoder {
    public typealias InboundOut = Frame
    public let maxFrameBytes: Int

    public init(maxFrameBytes: Int = defaultMaxFrameBytes) {
        self.maxFrameBytes = maxFrameBytes
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> Frame? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        let n = Int(length)
        if n > maxFrameBytes { throw FrameError.tooLarge(length: n, limit: maxFrameBytes) }
        if n == 0 { throw FrameError.empty }
        guard buffer.readableBytes >= 4 + n else { return nil }
        buffer.moveReaderIndex(forwardBy: 4)
        guard let type = buffer.readInteger(as: UInt8.self),
              let payload = buffer.readBytes(length: n - 1) else { return nil }
        return Frame(type: type, payload: payload)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> Frame? {
        try decode(buffer: &buffer)
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try decode(buffer: &buffer) else { return .needMoreData }
        context.fireChannelRead(Self.wrapInboundOut(frame))
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        let state = try decode(context: context, buffer: &buffer)
        if state == .needMoreData && buffer.readableBytes > 0 {
            let have = buffer.readableBytes
            buffer.moveReaderIndex(forwardBy: have)
            throw FrameError.truncated(have: have)
        }
        return state
    }
}

/// Writes frames with their length prefix.
public struct FrameEncoder: MessageToByteEncoder {
    public typealias OutboundIn = Frame

    public init() {}

    public func encode(data: Frame, out: inout ByteBuffer) throws {
        out.reserveCapacity(out.writerIndex + 5 + data.payload.count)
        out.writeInteger(UInt32(1 + data.payload.count))
        out.writeInteger(data.type)
        out.writeBytes(data.payload)
    }
}
