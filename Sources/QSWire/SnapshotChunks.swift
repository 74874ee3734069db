import NIOCore
import QSBytes

/// A `snapshotChunk` frame encoded in place: its header (length and type), then its
/// payload, appended by whoever reads the snapshot (straight from LMDB's copy) with the
/// length kept up to date. The frame's bytes are sent as they are, past the channel's
/// `FrameEncoder`, so a chunk is never copied into a `Frame` and then into the socket's
/// buffer. The same bytes as `FrameEncoder` writes for `Response.snapshotChunk`.
public struct EncodedSnapshotChunk: Sendable {
    /// The whole frame: length prefix, type byte, payload.
    public private(set) var frame: ByteBuffer

    /// The length prefix and the type byte.
    public static let headerBytes = 5

    /// An empty chunk with room for `capacity` payload bytes.
    public init(capacity: Int, allocator: ByteBufferAllocator = ByteBufferAllocator()) {
        frame = allocator.buffer(capacity: Self.headerBytes + capacity)
        frame.writeInteger(UInt32(1))
        frame.writeInteger(Response.Tag.snapshotChunk.rawValue)
    }

    /// The payload's length.
    public var payloadCount: Int { frame.readableBytes - Self.headerBytes }

    /// The payload, for the length of `body`.
    public func withPayload<T>(_ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        try frame.withUnsafeReadableBytes { try body(UnsafeRawBufferPointer(rebasing: $0[Self.headerBytes...])) }
    }

    /// Appends at most `count` payload bytes that `fill` writes into the memory it is given
    /// and counts (its result), and updates the frame's length.
    public mutating func appendPayload(upTo count: Int, _ fill: (UnsafeMutableRawBufferPointer) throws -> Int) rethrows {
        try frame.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { p in
            min(max(try fill(UnsafeMutableRawBufferPointer(rebasing: p[..<count])), 0), count)
        }
        frame.setInteger(UInt32(frame.readableBytes - 4), at: frame.readerIndex)
    }
}

/// What `SnapshotStreamDecoder` passes on: a whole frame, or bytes of a `snapshotChunk`
/// frame's payload as they arrived (a chunk may come in several parts; the parts of all
/// chunks, in order, are the snapshot's bytes).
public enum SnapshotStreamPart: Sendable, Equatable {
    case frame(Frame)
    /// Payload bytes of a snapshot chunk: a slice of the socket's buffer, not a copy.
    case chunkBytes(ByteBuffer)
}

/// Splits a snapshot stream (the answer to `snapshot`/`snapshotFrom`) as `FrameDecoder`
/// does, but passes each `snapshotChunk` frame's payload on as it arrives, as slices of
/// the buffers the socket filled: the receiver writes a snapshot to its file straight from
/// them. Every other frame is decoded whole by `FrameDecoder`, with its limit and its
/// errors; a chunk frame longer than the limit is refused as soon as its length arrives,
/// as any frame is. The bytes it holds are at most a frame header or one non-chunk frame,
/// so its `maximumBufferSize` is `FrameDecoder`'s.
public struct SnapshotStreamDecoder: NIOSingleStepByteToMessageDecoder, Sendable {
    public typealias InboundOut = SnapshotStreamPart
    private var frames: FrameDecoder
    /// Payload bytes of the current chunk frame not passed on yet.
    private var chunkLeft = 0
    /// Where the current chunk frame starts in the stream.
    private var chunkStart = 0

    public init(maxFrameBytes: Int = defaultMaxFrameBytes) {
        frames = FrameDecoder(maxFrameBytes: maxFrameBytes)
    }

    /// Bytes consumed so far.
    public var consumed: Int { frames.consumed }

    public var maximumBufferSize: Int { frames.maximumBufferSize }

    public mutating func decode(buffer: inout ByteBuffer) throws(DecodeError) -> SnapshotStreamPart? {
        if chunkLeft == 0 {
            let at = buffer.readerIndex
            guard let length = buffer.getInteger(at: at, as: UInt32.self), let type = buffer.getInteger(at: at + 4, as: UInt8.self),
                  length > 0, type == Response.Tag.snapshotChunk.rawValue else {
                // Another frame, or too few bytes to tell: decoded whole (or refused) as a frame.
                return try frames.decode(buffer: &buffer).map(SnapshotStreamPart.frame)
            }
            if Int(length) > frames.maxFrameBytes {
                throw DecodeError(offset: frames.consumed,
                                  reason: FrameDecoder.tooLarge(Int(length), limit: frames.maxFrameBytes), kind: .tooLarge)
            }
            buffer.moveReaderIndex(forwardBy: EncodedSnapshotChunk.headerBytes)
            chunkStart = frames.consumed
            frames.consumed += EncodedSnapshotChunk.headerBytes
            chunkLeft = Int(length) - 1
            if chunkLeft == 0 { return .chunkBytes(ByteBuffer()) }
        }
        let n = min(chunkLeft, buffer.readableBytes)
        guard n > 0, let part = buffer.readSlice(length: n) else { return nil }
        chunkLeft -= n
        frames.consumed += n
        return .chunkBytes(part)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws(DecodeError) -> SnapshotStreamPart? {
        if let part = try decode(buffer: &buffer) { return part }
        if chunkLeft > 0 {
            throw .endsInside("frame", offset: chunkStart, present: frames.consumed - chunkStart)
        }
        return try frames.decodeLast(buffer: &buffer, seenEOF: seenEOF).map(SnapshotStreamPart.frame)
    }

    /// A connection's snapshot stream decoder, its buffer bounded by NIO at `maximumBufferSize`.
    public static func handler(maxFrameBytes: Int) -> ByteToMessageHandler<SnapshotStreamDecoder> {
        let decoder = SnapshotStreamDecoder(maxFrameBytes: maxFrameBytes)
        return ByteToMessageHandler(decoder, maximumBufferSize: decoder.maximumBufferSize)
    }
}
