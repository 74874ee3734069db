import Foundation
import NIOCore

/// A damaged recording, KT or QS: where (the byte offset of the frame that is cut or
/// corrupt) and why. Everything before `offset` is whole and was delivered.
public struct CaptureDamage: Error, CustomStringConvertible, Sendable, Equatable {
    public let path: String
    public let offset: Int
    public let reason: String
    /// True when the file ends inside a frame (a recorder killed mid-write), false for a
    /// corrupt frame.
    public let truncated: Bool

    public init(path: String, offset: Int, reason: String, truncated: Bool) {
        self.path = path
        self.offset = offset
        self.reason = reason
        self.truncated = truncated
    }

    public var description: String {
        truncated
            ? "capture \(path) ends inside a frame at byte offset \(offset) (\(reason)); the recording was cut short"
            : "capture \(path) is damaged at byte offset \(offset): \(reason)"
    }
}

/// The file side of a capture reader: a buffer refilled from the file in 1 MiB chunks,
/// so memory stays bounded whatever the file's size.
public struct CaptureFileBuffer {
    public let path: String
    private let handle: FileHandle
    public var buffer = ByteBuffer()
    private var eof = false

    public init(path: String, handle: FileHandle) {
        self.path = path
        self.handle = handle
    }

    /// Reads the next chunk; at the end of the file, returns false if the buffer is empty
    /// and throws a truncation `CaptureDamage` at `frameOffset` if a partial frame remains.
    public mutating func refill(frameOffset: Int) throws -> Bool {
        if eof {
            guard buffer.readableBytes == 0 else {
                throw CaptureDamage(path: path, offset: frameOffset, reason: "\(buffer.readableBytes) bytes of it present", truncated: true)
            }
            return false
        }
        buffer.discardReadBytes()
        let chunk = try handle.read(upToCount: 1 << 20) ?? Data()
        if chunk.isEmpty { eof = true } else { buffer.writeBytes(chunk) }
        return true
    }

    public func close() {
        try? handle.close()
    }
}
