import NIOCore

/// Splits the memcached byte stream into commands: a line ends with LF (a CR before it is
/// dropped); the data block after a storage command is skipped without being buffered. A
/// line longer than the limit yields one `malformed(close: true)` and the rest of the
/// stream is discarded, so memory per connection stays bounded.
struct MemcachedDecoder: ByteToMessageDecoder {
    typealias InboundOut = MemcachedCommand

    let limits: MemcachedLimits
    private var skip = 0
    private var failed = false

    init(limits: MemcachedLimits) {
        self.limits = limits
    }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if failed {
            buffer.moveReaderIndex(to: buffer.writerIndex)
            return .needMoreData
        }
        if skip > 0 {
            let n = min(skip, buffer.readableBytes)
            buffer.moveReaderIndex(forwardBy: n)
            skip -= n
            return skip > 0 ? .needMoreData : .continue
        }
        let view = buffer.readableBytesView
        guard let lf = view.firstIndex(of: 0x0A) else {
            if view.count >= limits.maxLineBytes { fail(context: context, buffer: &buffer) }
            return .needMoreData
        }
        let length = lf - view.startIndex + 1
        guard length <= limits.maxLineBytes else {
            fail(context: context, buffer: &buffer)
            return .needMoreData
        }
        guard var line = buffer.readBytes(length: length)?[...] else { return .needMoreData }
        line = line.dropLast()
        if line.last == 0x0D { line = line.dropLast() }
        let (command, skipBytes) = MemcachedLineParser.parse(line, limits: limits)
        skip = skipBytes
        context.fireChannelRead(wrapInboundOut(command))
        return .continue
    }

    private mutating func fail(context: ChannelHandlerContext, buffer: inout ByteBuffer) {
        failed = true
        buffer.moveReaderIndex(to: buffer.writerIndex)
        context.fireChannelRead(wrapInboundOut(.malformed(
            reply: "CLIENT_ERROR line too long",
            reason: "command line longer than \(limits.maxLineBytes) bytes", close: true)))
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        buffer.moveReaderIndex(to: buffer.writerIndex)
        return .needMoreData
    }
}
