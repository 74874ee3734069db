import KTFormats
import NIOCore
import QSBytes

/// Reads a recorded KT replication stream (`stream.bin`, or a `qsctl record` capture: the
/// acceptance byte, then update and heartbeat frames) frame by frame with the live
/// client's own `ReplicationFrameDecoder`, fed from the file in chunks, so a recording
/// larger than memory works. Shared by the capture source of the bridge and by
/// `qsctl feed`, so both name the same byte offset when a recording is damaged.
public struct KTCaptureReader {
    public let path: String
    private let file: DecodingFileReader<ReplicationFrameDecoder>

    public init(path: String, maxMessageBytes: Int = 64 << 20) throws {
        self.path = path
        file = try DecodingFileReader(path: path, decoder: ReplicationFrameDecoder(maxMessageBytes: maxMessageBytes),
                                      maximumBufferSize: maxMessageBytes + 13)
    }

    /// Byte offset of the next frame: after `next()` returns a frame, the offset just past it.
    public var offset: Int { file.offset }

    /// The next whole frame with its starting byte offset, nil at a clean end of file.
    /// Throws `CaptureDamage` for a corrupt frame or a file that ends inside one.
    public mutating func next() throws -> (offset: Int, frame: ReplicationFrame)? {
        do {
            if let (offset, frame) = try file.next() { return (offset, frame) }
            return try file.finish().first.map { ($0.offset, $0.message) }
        } catch let error as DecodeError {
            throw CaptureDamage(path: path, error)
        }
    }

    public func close() {
        file.close()
    }
}
