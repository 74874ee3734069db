import NIOCore
import QSBytes

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

/// Splits a byte stream into frames: a live connection (`ByteToMessageHandler`) or a
/// recorded one (a QS capture fed in chunks through `NIOSingleStepByteToMessageProcessor`).
/// Refuses (throws `DecodeError` of kind `.tooLarge`) a frame longer than `maxFrameBytes`
/// as soon as its length prefix arrives, before buffering it; a stream that ends inside a
/// frame is a `.truncated` error. Offsets count from the first byte decoded.
public struct FrameDecoder: NIOSingleStepByteToMessageDecoder, Sendable {
    public typealias InboundOut = Frame
    public let maxFrameBytes: Int
    /// A server's rule for frames longer than `LargeFrames.openBytes` (nil: none).
    public let largeFrames: LargeFrames?
    /// Bytes consumed so far: the stream offset of the next frame.
    public internal(set) var consumed = 0
    /// The offset of the frame `largeFrames` admitted (its token checked once).
    private var admittedAt = -1
    /// The offset of the frame over `openBytes` it admitted (a write, by its token where
    /// the node has one): its bytes are not held against `arriving`.
    private var largeAt = -1

    /// Who may send a server frames longer than `openBytes`, checked as soon as the frame's
    /// first bytes arrive and before the rest is buffered: only a write (batch, conditional
    /// writes, compatible append) whose token `admits` — any client can otherwise make the
    /// server hold `maxFrameBytes` per connection before anything is checked.
    public struct LargeFrames: Sendable {
        public static let defaultOpenBytes = 1 << 20
        public let openBytes: Int
        /// The node takes writes at all (a replica refuses them whatever their size).
        public let writable: Bool
        /// The write token's check (constant time) and its length; nil: writes need no
        /// token (the node listens on loopback or a Unix socket only).
        public let admits: (@Sendable ([UInt8]) -> Bool)?
        public let tokenLength: Int

        public init(openBytes: Int = defaultOpenBytes, writable: Bool, admits: (@Sendable ([UInt8]) -> Bool)?, tokenLength: Int = 0) {
            self.openBytes = openBytes
            self.writable = writable
            self.admits = admits
            self.tokenLength = tokenLength
        }

        /// Why a frame of `length` bytes starting with `head` (the bytes arrived so far,
        /// from its type byte on) is refused; nil when admitted; `undecided` when more of
        /// its head must arrive first.
        func check(length: Int, head: ByteBufferView) -> Verdict {
            guard length > openBytes else { return .admitted }
            return write(head: head, what: "a frame of \(length) bytes, over the \(openBytes) bytes any client may send")
        }

        /// Whether the frame starting with `head` is a write this node takes from whoever
        /// sends it: a batch, conditional writes or an append, to a node that takes writes,
        /// carrying its write token (any, on a node without one); `what` names the frame in
        /// a refusal.
        func write(head: ByteBufferView, what: String) -> Verdict {
            guard var type = head.first else { return .undecided }
            // Where the request's payload (its token first) starts: after the type byte, or
            // in a checked envelope after its header (the inner type, the checksum).
            var payload = 1
            if type == CheckedFrames.tag {
                guard head.count >= 2 else { return .undecided }
                type = head[head.index(after: head.startIndex)]
                payload = 1 + CheckedFrames.headerBytes
            }
            guard Self.writeTypes.contains(type) else {
                return .refused("\(what), is not a write: only batches, conditional writes and appends may be longer", .frameTooLarge)
            }
            guard writable else { return .refused("this node is a replica and takes no writes: write to the root", .notWritable) }
            guard let admits else { return .admitted }
            let unauthorized = Verdict.refused("wrong write token (\(what)): this node requires the token from its --write-token-file on every write", .unauthorized)
            guard head.count >= payload + 4 else { return .undecided }
            let i = head.startIndex
            let n = (0..<4).reduce(0) { $0 << 8 | Int(head[head.index(i, offsetBy: payload + $1)]) }
            // The token's length first: another length is refused before it is awaited.
            guard n == tokenLength else { return unauthorized }
            guard head.count >= payload + 4 + n else { return .undecided }
            let start = head.index(i, offsetBy: payload + 4)
            let token = Array(head[start..<head.index(start, offsetBy: n)])
            return admits(token) ? .admitted : unauthorized
        }

        enum Verdict: Equatable { case admitted, undecided, refused(String, ErrorCode) }

        /// The requests that may be longer than `openBytes` (bare or as a checked envelope's
        /// inner type): batches, conditional writes, compatible appends.
        public static let writeTypes: Set<UInt8> = [Request.Tag.batch.rawValue, Request.Tag.writes.rawValue, Request.Tag.append.rawValue]
    }

    /// One connection's share of a server's budget for frames still arriving (nil: none).
    public let arriving: ArrivingFrames?

    public init(maxFrameBytes: Int = defaultMaxFrameBytes, largeFrames: LargeFrames? = nil, arriving: ArrivingFrames? = nil) {
        self.maxFrameBytes = maxFrameBytes
        self.largeFrames = largeFrames
        self.arriving = arriving
    }

    /// Why a frame length is refused; a length whose four bytes are printable text (`HTTP`,
    /// `GET `, `POST`) is the peer speaking another protocol, and the reason says so.
    public static func tooLarge(_ n: Int, limit: Int) -> String {
        let bytes = (0..<4).map { UInt8(truncatingIfNeeded: n >> (24 - 8 * $0)) }
        if bytes.allSatisfy({ (0x20...0x7E).contains($0) }) {
            let text = String(decoding: bytes, as: UTF8.self)
            let what = text.hasPrefix("HTTP") || ["GET ", "POST", "PUT ", "HEAD"].contains(text) ? "HTTP" : "text"
            return "the peer speaks \(what) (its first bytes are '\(text)'), not the QS write protocol: is the address an admin, KT HTTP or memcached port instead of a node's write port (--listen)?"
        }
        return "frame of \(n) bytes exceeds the limit of \(limit) bytes"
    }

    public mutating func decode(buffer: inout ByteBuffer) throws(DecodeError) -> Frame? {
        let limit = maxFrameBytes
        if let largeFrames, admittedAt != consumed, buffer.readableBytes >= 4,
           let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self).map(Int.init), length <= limit {
            let view = buffer.readableBytesView
            switch largeFrames.check(length: length, head: view[view.index(view.startIndex, offsetBy: 4)...]) {
            case .admitted:
                admittedAt = consumed
                if length > largeFrames.openBytes { largeAt = consumed }
            case .undecided: return nil
            case let .refused(why, code): throw DecodeError(offset: consumed, reason: why, kind: .refused(code: code.rawValue))
            }
        }
        guard let (frame, length) = try ByteReader.prefix(of: buffer.readableBytesView, base: consumed, { r throws(DecodeError) in
            let start = r.offset
            let n = Int(try r.readU32("frame length"))
            if n > limit {
                throw DecodeError(offset: start, reason: FrameDecoder.tooLarge(n, limit: limit), kind: .tooLarge)
            }
            if n == 0 { throw DecodeError(offset: start, reason: "frame of length 0 has no type byte") }
            let type = try r.readU8("frame type")
            return Frame(type: type, payload: try r.readBytes(n - 1, "frame payload"))
        }) else {
            // Not whole: its bytes so far held, unless a token admitted it (one over
            // `openBytes` when its head came, or a write carrying the token now).
            if let arriving, !arriving.hold(largeAt == consumed || carriesWriteToken(buffer) ? 0 : buffer.readableBytes) {
                throw DecodeError(offset: consumed, reason: "busy: the frames arriving on this node's write port from connections that presented no token hold all it keeps for them (\(arriving.limit) bytes, --max-arriving-frame-bytes); try again shortly",
                                  kind: .refused(code: ErrorCode.busy.rawValue))
            }
            return nil
        }
        arriving?.hold(0)
        buffer.moveReaderIndex(forwardBy: length)
        consumed += length
        return frame
    }

    /// Whether the frame arriving at the buffer's reader index is a write carrying the
    /// node's write token (or any write, on a node without one): a writer's frames are not
    /// held against `arriving`, its first included, before its connection is trusted.
    private func carriesWriteToken(_ buffer: ByteBuffer) -> Bool {
        guard let largeFrames, arriving?.trusted == false, buffer.readableBytes > 4 else { return false }
        let view = buffer.readableBytesView
        return largeFrames.write(head: view[view.index(view.startIndex, offsetBy: 4)...], what: "") == .admitted
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws(DecodeError) -> Frame? {
        if let frame = try decode(buffer: &buffer) { return frame }
        if buffer.readableBytes > 0 { throw .endsInside("frame", offset: consumed, present: buffer.readableBytes) }
        return nil
    }

    /// The most bytes a reader holds before a frame is whole: the longest frame with its
    /// length prefix. The decoder refuses a longer declared length as soon as it arrives;
    /// NIO's `maximumBufferSize` set to this is the bound behind that refusal.
    public var maximumBufferSize: Int {
        maxFrameBytes > Int.max - 4 ? Int.max : maxFrameBytes + 4
    }

    /// A connection's frame decoder: frames of at most `maxFrameBytes`, its buffer bounded
    /// by NIO at `maximumBufferSize`.
    public static func handler(maxFrameBytes: Int, largeFrames: LargeFrames? = nil, arriving: ArrivingFrames? = nil) -> ByteToMessageHandler<FrameDecoder> {
        let decoder = FrameDecoder(maxFrameBytes: maxFrameBytes, largeFrames: largeFrames, arriving: arriving)
        return ByteToMessageHandler(decoder, maximumBufferSize: decoder.maximumBufferSize)
    }
}

/// One connection's share of a server's budget for the bytes of frames still arriving
/// (`--max-arriving-frame-bytes`): a frame not yet whole holds what has come of it, until it
/// is whole or the connection ends (`releaseAll`). A write carrying the node's write token
/// (any write, on a node without one: `FrameDecoder.LargeFrames.write`), judged from its
/// first bytes, holds nothing, and neither does anything a connection sends once it has
/// presented one of the node's tokens (`trusted`). Without
/// it, a thousand connections each sending 1 MiB less a byte, no token needed, made a node
/// hold a gigabyte; only the connection caps bounded it (about 11 GB).
///
/// Used on its connection's event loop only (its decoder and handler, and the close).
public final class ArrivingFrames: @unchecked Sendable {
    private let take: @Sendable (Int) -> Bool
    private let give: @Sendable (Int) -> Void
    /// The whole budget's size, for the refusal's message.
    public let limit: Int
    /// Bytes this connection holds now.
    public private(set) var held = 0
    /// The connection presented one of the node's tokens: what it sends holds nothing.
    public private(set) var trusted = false

    /// `take` takes bytes of the budget (false: no room, nothing taken), `give` gives them back.
    public init(limit: Int, take: @escaping @Sendable (Int) -> Bool, give: @escaping @Sendable (Int) -> Void) {
        self.limit = limit
        self.take = take
        self.give = give
    }

    /// Holds `bytes` in all (more or fewer than now); false when more do not fit (what is
    /// held stays).
    @discardableResult
    public func hold(_ bytes: Int) -> Bool {
        let bytes = trusted ? 0 : bytes
        if bytes > held {
            guard take(bytes - held) else { return false }
        } else if bytes < held {
            give(held - bytes)
        }
        held = bytes
        return true
    }

    /// The connection presented a token: nothing it sends is held from now on.
    public func trust() {
        hold(0)
        trusted = true
    }

    /// Gives back everything (the connection ended).
    public func releaseAll() { hold(0) }
}

/// Writes each frame into a buffer of its own, with its length prefix, for a server: NIO's
/// `MessageToByteHandler` keeps one buffer for the connection's life, with the capacity of
/// the largest frame it ever wrote (a reply to a get of a large value: anyone's to ask).
public final class FrameWriter: ChannelOutboundHandler, RemovableChannelHandler {
    public typealias OutboundIn = Frame
    public typealias OutboundOut = ByteBuffer

    public init() {}

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let frame = unwrapOutboundIn(data)
        var out = context.channel.allocator.buffer(capacity: 5 + frame.payload.count)
        out.writeInteger(UInt32(1 + frame.payload.count))
        out.writeInteger(frame.type)
        out.writeBytes(frame.payload)
        context.write(wrapOutboundOut(out), promise: promise)
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
