import NIOCore

/// Splits the memcached byte stream into commands: a line ends with LF (a CR before it is
/// dropped); the data block after a storage command is skipped without being buffered. A
/// line longer than the limit yields one `malformed(close: true)` and the rest of the
/// stream is discarded, so memory per connection stays bounded. Public for the fuzz
/// target (`qsfuzz`), which runs it on any bytes.
public struct MemcachedDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = MemcachedCommand

    let limits: MemcachedLimits
    private var skip = 0
    private var failed = false

    public init(limits: MemcachedLimits) {
        self.limits = limits
    }

    /// The most bytes a connection holds: less than one line of the longest length (a
    /// longer line is refused as soon as that many bytes are in, and a data block is
    /// skipped as it arrives). NIO's `maximumBufferSize` set to this bounds the buffer
    /// behind the decoder's own refusal.
    var maximumBufferSize: Int { limits.maxLineBytes }

    public mutating func decode(buffer: inout ByteBuffer) throws -> MemcachedCommand? {
        if failed {
            buffer.moveReaderIndex(to: buffer.writerIndex)
            return nil
        }
        if skip > 0 {
            let n = min(skip, buffer.readableBytes)
            buffer.moveReaderIndex(forwardBy: n)
            skip -= n
            if skip > 0 { return nil }
        }
        let view = buffer.readableBytesView
        guard let lf = view.firstIndex(of: 0x0A) else {
            return view.count >= limits.maxLineBytes ? fail(&buffer) : nil
        }
        let length = lf - view.startIndex + 1
        guard length <= limits.maxLineBytes else { return fail(&buffer) }
        guard var line = buffer.readBytes(length: length)?[...] else { return nil }
        line = line.dropLast()
        if line.last == 0x0D { line = line.dropLast() }
        let (command, skipBytes) = MemcachedLineParser.parse(line, limits: limits)
        skip = skipBytes
        return command
    }

    private mutating func fail(_ buffer: inout ByteBuffer) -> MemcachedCommand {
        failed = true
        buffer.moveReaderIndex(to: buffer.writerIndex)
        return .malformed(reply: "CLIENT_ERROR line too long",
                          reason: "command line longer than \(limits.maxLineBytes) bytes", close: true)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> MemcachedCommand? {
        if let command = try decode(buffer: &buffer) { return command }
        buffer.moveReaderIndex(to: buffer.writerIndex)
        return nil
    }
}
