import Foundation
import NIOCore
import QSBytes

/// Reads a file through the decoder that reads the same format from a socket: the file's
/// bytes are fed, in chunks, to a `NIOSingleStepByteToMessageProcessor` bounded by
/// `maximumBufferSize`, so memory stays bounded whatever the file's size and a file decodes
/// to exactly the values a connection carrying the same bytes would.
///
/// Captures (KT replication streams, QS log captures) and ulog files are all read this way.
/// `next()` returns nil at the current end of the file and may be called again once the
/// file has grown (a ulog KT still appends to); `finish()` says whether the file ends at a
/// message boundary.
public final class DecodingFileReader<Decoder: NIOSingleStepByteToMessageDecoder> {
    public let path: String
    private let handle: FileHandle
    private let processor: NIOSingleStepByteToMessageProcessor<Decoder>
    private let maximumBufferSize: Int
    private let chunkSize: Int
    /// File offset of the first byte fed to the decoder (after a header read separately).
    public let startOffset: Int
    /// Bytes fed to the processor so far.
    private var fed = 0
    /// Decoded messages not handed out yet, with their file offsets.
    private var ready: [(offset: Int, message: Decoder.InboundOut)] = []
    private var readyIndex = 0
    /// An error met after the messages in `ready`: thrown once they are handed out.
    private var failure: DecodeError?
    /// File offset just past the last decoded message.
    public private(set) var offset: Int

    /// The file cannot be opened.
    public struct CannotOpen: Error, CustomStringConvertible, Sendable {
        public let path: String
        public var description: String { "cannot open \(path): check the path and permissions" }
    }

    /// Opens `path` and positions it at `startOffset`.
    public init(path: String, decoder: Decoder, startOffset: Int = 0, maximumBufferSize: Int, chunkSize: Int = 1 << 20) throws {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw CannotOpen(path: path) }
        if startOffset > 0 { try handle.seek(toOffset: UInt64(startOffset)) }
        self.path = path
        self.handle = handle
        self.processor = NIOSingleStepByteToMessageProcessor(decoder, maximumBufferSize: maximumBufferSize)
        self.maximumBufferSize = maximumBufferSize
        self.chunkSize = chunkSize
        self.startOffset = startOffset
        self.offset = startOffset
    }

    /// Bytes after the last whole message (a message still being written, or cut).
    public var unprocessedBytes: Int { processor.unprocessedBytes }

    /// The next message and its file offset; nil at the current end of the file. Throws
    /// `DecodeError` (offsets counted from the file's start) at a malformed message, after
    /// every whole message before it.
    public func next() throws -> (offset: Int, message: Decoder.InboundOut)? {
        while true {
            if readyIndex < ready.count {
                defer { readyIndex += 1 }
                return ready[readyIndex]
            }
            if let failure { throw failure }
            ready.removeAll(keepingCapacity: true)
            readyIndex = 0
            let chunk = try handle.read(upToCount: chunkSize) ?? Data()
            if chunk.isEmpty { return nil }
            fed += chunk.count
            decode { try processor.process(buffer: ByteBuffer(bytes: chunk), $0) }
        }
    }

    /// At the end of the file: the decoder's last messages, or a `.truncated` `DecodeError`
    /// when the file ends inside one.
    public func finish() throws -> [(offset: Int, message: Decoder.InboundOut)] {
        if let failure { throw failure }
        ready.removeAll()
        readyIndex = 0
        decode { try processor.finishProcessing(seenEOF: true, $0) }
        if let failure { throw failure }
        return ready
    }

    private func decode(_ run: ((Decoder.InboundOut) throws -> Void) throws -> Void) {
        do {
            try run { message in
                let end = startOffset + fed - processor.unprocessedBytes
                ready.append((offset, message))
                offset = end
            }
        } catch let error as DecodeError {
            failure = error.shifted(by: startOffset)
        } catch is ByteToMessageDecoderError.PayloadTooLargeError {
            failure = DecodeError(offset: offset, reason: "more than \(maximumBufferSize) bytes without a whole frame", kind: .tooLarge)
        } catch {
            failure = DecodeError(offset: offset, reason: "\(error)")
        }
    }

    public func close() {
        try? handle.close()
    }
}
