import Glibc
import NIOCore

/// Splits the memcached byte stream into command lines: a line ends with LF (a CR before
/// it is dropped); the data block after a storage command is skipped (`skip`) without being
/// buffered. A line longer than the limit yields one `malformed(close: true)` and the rest
/// of the stream is discarded, so memory per connection stays bounded. The one framing of
/// the interface: `MemcachedHandler` answers the lines in place, `MemcachedDecoder` turns
/// them into commands.
struct MemcachedFraming {
    let limits: MemcachedLimits
    /// Bytes of a refused storage command's data block still to be skipped.
    var skip = 0
    private var failed = false

    init(limits: MemcachedLimits) {
        self.limits = limits
    }

    enum Next {
        /// A whole line at `start..<start+count` of the buffer's bytes (line ending left
        /// out); the reader index has moved past it, the bytes stay until the buffer is
        /// written to again.
        case line(start: Int, count: Int)
        /// A line longer than the limit: the reply, after which the connection closes.
        case failure(MemcachedCommand)
    }

    /// The next line of `buffer`, nil when more bytes are needed.
    mutating func next(_ buffer: inout ByteBuffer) -> Next? {
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
        // A request of the binary protocol (magic 0x80) holds no newline to wait for: its
        // client would wait for its own timeout. Answered in text (a binary client reads an
        // error either way) and closed.
        if buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) == 0x80 {
            failed = true
            buffer.moveReaderIndex(to: buffer.writerIndex)
            return .failure(.malformed(reply: "SERVER_ERROR the binary protocol is not served: use the text protocol",
                                       reason: "binary protocol request (magic 0x80)", close: true))
        }
        let lf: Int? = buffer.withUnsafeReadableBytes { bytes in
            guard let base = bytes.baseAddress, let p = memchr(base, 0x0A, bytes.count) else { return nil }
            return UnsafeRawPointer(p) - base
        }
        guard let lf else {
            return buffer.readableBytes >= limits.maxLineBytes ? fail(&buffer) : nil
        }
        guard lf + 1 <= limits.maxLineBytes else { return fail(&buffer) }
        let start = buffer.readerIndex
        var count = lf
        if count > 0, buffer.getInteger(at: start + count - 1, as: UInt8.self) == 0x0D { count -= 1 }
        buffer.moveReaderIndex(forwardBy: lf + 1)
        return .line(start: start, count: count)
    }

    private mutating func fail(_ buffer: inout ByteBuffer) -> Next {
        failed = true
        buffer.moveReaderIndex(to: buffer.writerIndex)
        return .failure(.malformed(reply: "CLIENT_ERROR line too long",
                                   reason: "command line longer than \(limits.maxLineBytes) bytes", close: true))
    }
}

extension ByteBuffer {
    /// The bytes at `start..<start+count` of the buffer's storage (read or not), valid only
    /// inside `body`.
    @inline(__always)
    func withBytes<T>(at start: Int, count: Int, _ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        try withVeryUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[start..<(start + count)])) }
    }
}

/// The memcached stream as commands (`MemcachedFraming` and `MemcachedLineParser`). Public
/// for the fuzz target (`qsfuzz`), which runs it on any bytes; the server answers lines in
/// place instead (`MemcachedHandler`).
public struct MemcachedDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = MemcachedCommand

    private var framing: MemcachedFraming

    public init(limits: MemcachedLimits) {
        framing = MemcachedFraming(limits: limits)
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> MemcachedCommand? {
        switch framing.next(&buffer) {
        case nil:
            return nil
        case let .failure(command)?:
            return command
        case let .line(start, count)?:
            let limits = framing.limits
            let (command, skip) = buffer.withBytes(at: start, count: count) { MemcachedLineParser.parse($0, limits: limits) }
            framing.skip = skip
            return command
        }
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> MemcachedCommand? {
        if let command = try decode(buffer: &buffer) { return command }
        buffer.moveReaderIndex(to: buffer.writerIndex)
        return nil
    }
}
