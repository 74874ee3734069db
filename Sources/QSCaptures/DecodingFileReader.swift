import Foundation
import NIOCore
import QSBytes

/// Reads a file through the decoder that reads the same format from a socket: the file's
/// bytes are read, in chunks, into one `ByteBuffer` the decoder takes whole messages off,
/// one at a time as they are asked for, so memory stays bounded whatever the file's size
/// and a file decodes to exactly the values a connection carrying the same bytes would.
///
/// Captures (KT replication streams, QS log captures) and ulog files are all read this way.
/// `next()` returns nil at the current end of the file and may be called again once the
/// file has grown (a ulog KT still appends to); `finish()` says whether the file ends at a
/// message boundary.
///
/// The loop is NIO's `NIOSingleStepByteToMessageProcessor`'s, bounded by `maximumBufferSize`
/// the same way (more bytes than that without a whole message is an error), without its
/// copies: a chunk is read straight into the buffer's free space (the bytes of a message
/// cut by the chunk's end are moved to the front first), not read into `Data`, copied into
/// a `ByteBuffer` and appended to what is left of the one before.
public final class DecodingFileReader<Decoder: NIOSingleStepByteToMessageDecoder> {
    public let path: String
    private let handle: FileHandle
    private var decoder: Decoder
    private let maximumBufferSize: Int
    private let chunkSize: Int
    /// File offset of the first byte fed to the decoder (after a header read separately).
    public let startOffset: Int
    /// Bytes read from the file and not yet taken off by the decoder.
    private var buffer: ByteBuffer
    /// Bytes read so far.
    private var fed = 0
    /// The error met: thrown again at every later call.
    private var failure: DecodeError?
    /// File offset just past the last decoded message.
    public private(set) var offset: Int

    /// The file cannot be opened.
    public struct CannotOpen: Error, CustomStringConvertible, Sendable {
        public let path: String
        public var description: String { "cannot open \(path): check the path and permissions" }
    }

    /// The file cannot be read.
    public struct CannotRead: Error, CustomStringConvertible, Sendable {
        public let path: String
        public let errno: Int32
        public var description: String { "cannot read \(path): \(String(cString: strerror(errno)))" }
    }

    /// Opens `path` and positions it at `startOffset`.
    public init(path: String, decoder: Decoder, startOffset: Int = 0, maximumBufferSize: Int, chunkSize: Int = 1 << 20) throws {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw CannotOpen(path: path) }
        if startOffset > 0 { try handle.seek(toOffset: UInt64(startOffset)) }
        self.path = path
        self.handle = handle
        self.decoder = decoder
        self.maximumBufferSize = maximumBufferSize
        self.chunkSize = max(1, chunkSize)
        self.startOffset = startOffset
        self.offset = startOffset
        buffer = ByteBufferAllocator().buffer(capacity: 0)
    }

    /// Bytes after the last whole message (once `next()` has returned nil: a message still
    /// being written, or cut).
    public var unprocessedBytes: Int { buffer.readableBytes }

    /// The open file's device and inode: a path that now names another file (replaced by a
    /// rename, as `rsync` or `cp` then `mv` ship one) differs from it.
    public var fileIdentity: FileIdentity? { FileIdentity(descriptor: handle.fileDescriptor) }

    /// The next message and its file offset; nil at the current end of the file. Throws
    /// `DecodeError` (offsets counted from the file's start) at a malformed message, after
    /// every whole message before it.
    public func next() throws -> (offset: Int, message: Decoder.InboundOut)? {
        while true {
            if let failure { throw failure }
            if buffer.readableBytes > 0, let message = try decoding({ try decoder.decode(buffer: &buffer) }) {
                return message
            }
            if buffer.readableBytes > maximumBufferSize { throw fail(tooLarge()) }
            guard try read() > 0 else { return nil }
        }
    }

    /// At the end of the file: the decoder's last messages, or a `.truncated` `DecodeError`
    /// when the file ends inside one.
    public func finish() throws -> [(offset: Int, message: Decoder.InboundOut)] {
        if let failure { throw failure }
        var out = [(offset: Int, message: Decoder.InboundOut)]()
        if buffer.readableBytes == 0 {
            // As NIO does: the decoder is asked once, with nothing left.
            if let message = try decoding({ try decoder.decodeLast(buffer: &buffer, seenEOF: true) }) { out.append(message) }
            return out
        }
        while buffer.readableBytes > 0, let message = try decoding({ try decoder.decodeLast(buffer: &buffer, seenEOF: true) }) {
            out.append(message)
        }
        if buffer.readableBytes > maximumBufferSize { throw fail(tooLarge()) }
        return out
    }

    /// Runs one decode step: a message comes with its file offset (and moves `offset` past
    /// it); an error is kept, with its offset counted from the file's start, and thrown.
    private func decoding(_ step: () throws -> Decoder.InboundOut?) throws -> (offset: Int, message: Decoder.InboundOut)? {
        let message: Decoder.InboundOut?
        do {
            message = try step()
        } catch let error as DecodeError {
            throw fail(error.shifted(by: startOffset))
        } catch {
            throw fail(DecodeError(offset: offset, reason: "\(error)"))
        }
        guard let message else { return nil }
        let at = offset
        offset = startOffset + fed - buffer.readableBytes
        return (at, message)
    }

    private func fail(_ error: DecodeError) -> DecodeError {
        failure = error
        return error
    }

    private func tooLarge() -> DecodeError {
        DecodeError(offset: offset, reason: "more than \(maximumBufferSize) bytes without a whole frame", kind: .tooLarge)
    }

    /// Reads up to `chunkSize` more bytes into the buffer; 0 at the current end of the file.
    private func read() throws -> Int {
        buffer.discardReadBytes() // what is left is a message cut by the last chunk's end
        let fd = handle.fileDescriptor, want = chunkSize
        var failed: Int32 = 0
        let n = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: want) { space -> Int in
            while true {
                let r = Foundation.read(fd, space.baseAddress, want)
                if r >= 0 { return r }
                if errno != EINTR {
                    failed = errno
                    return 0
                }
            }
        }
        if failed != 0 { throw CannotRead(path: path, errno: failed) }
        fed += n
        return n
    }

    public func close() {
        try? handle.close()
    }
}

/// A file's device and inode.
public struct FileIdentity: Equatable, Sendable {
    public let device: UInt64
    public let inode: UInt64

    /// The file open on `descriptor`.
    public init?(descriptor: Int32) {
        var st = stat()
        guard fstat(descriptor, &st) == 0 else { return nil }
        (device, inode) = (UInt64(st.st_dev), UInt64(st.st_ino))
    }

    /// The file `path` names now, nil when there is none.
    public init?(path: String) {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        (device, inode) = (UInt64(st.st_dev), UInt64(st.st_ino))
    }
}
