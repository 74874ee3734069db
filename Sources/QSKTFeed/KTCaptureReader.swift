import Foundation
import KTFormats
import NIOCore
import QSFeed

/// Reads a recorded KT replication stream (`stream.bin`, or a `qsctl record` capture: the
/// acceptance byte, then update and heartbeat frames) frame by frame, in 1 MiB chunks, so
/// a recording larger than memory works. Shared by the capture source of the bridge and
/// by `qsctl feed`, so both name the same byte offset when a recording is damaged.
public struct KTCaptureReader {
    public let path: String
    private var file: CaptureFileBuffer
    private var decoder: BoundedReplicationDecoder

    public struct CannotOpen: Error, CustomStringConvertible, Sendable {
        public let path: String
        public var description: String { "cannot open capture file \(path): check the path and permissions" }
    }

    public init(path: String, maxMessageBytes: Int = 64 << 20) throws {
        guard let h = FileHandle(forReadingAtPath: path) else { throw CannotOpen(path: path) }
        self.path = path
        file = CaptureFileBuffer(path: path, handle: h)
        decoder = BoundedReplicationDecoder(maxMessageBytes: maxMessageBytes)
    }

    /// Byte offset of the next frame: after `next()` returns a frame, the offset just past it.
    public var offset: Int { decoder.consumed }

    /// The next whole frame with its starting byte offset, nil at a clean end of file.
    /// Throws `CaptureDamage` for a corrupt frame or a file that ends inside one.
    public mutating func next() throws -> (offset: Int, frame: ReplicationFrame)? {
        while true {
            let start = decoder.consumed
            let frame: ReplicationFrame?
            do {
                frame = try decoder.next(&file.buffer)
            } catch let e as DamagedStreamError {
                throw CaptureDamage(path: path, offset: e.offset, reason: e.reason, truncated: false)
            } catch let e as ReplicationStreamError {
                throw CaptureDamage(path: path, offset: e.offset, reason: "\(e)", truncated: false)
            }
            if let frame { return (start, frame) }
            guard try file.refill(frameOffset: start) else { return nil }
        }
    }

    public func close() {
        file.close()
    }
}
