import Foundation

/// Appends whole frames to a recording file. Frames are buffered and written in one
/// `write` per flush, never split across flushes, so a file stopped between flushes ends
/// at a frame boundary; `finish()` flushes and fsyncs.
public final class CaptureFileWriter {
    public let path: String
    private let handle: FileHandle
    private var pending: [UInt8] = []
    private var lastFlush = ContinuousClock.now
    /// Bytes handed to the file so far (flushed or pending).
    public private(set) var bytes = 0
    let flushBytes: Int
    let flushInterval: Duration

    /// Creates (or truncates) `path`.
    public init(path: String, flushBytes: Int = 1 << 20, flushInterval: Duration = .milliseconds(200)) throws {
        guard FileManager.default.createFile(atPath: path, contents: nil), let h = FileHandle(forWritingAtPath: path) else {
            throw RecordingError("cannot create \(path): check the directory exists and is writable")
        }
        self.path = path
        handle = h
        self.flushBytes = flushBytes
        self.flushInterval = flushInterval
    }

    /// Queues one whole frame; flushes when the buffer is large or old enough.
    public func append(frame: [UInt8]) throws {
        pending.append(contentsOf: frame)
        bytes += frame.count
        if pending.count >= flushBytes || ContinuousClock.now - lastFlush >= flushInterval { try flush() }
    }

    /// Writes what is buffered (whole frames only).
    public func flush() throws {
        lastFlush = ContinuousClock.now
        guard !pending.isEmpty else { return }
        try handle.write(contentsOf: pending)
        pending.removeAll(keepingCapacity: true)
    }

    /// Flushes, fsyncs and closes.
    public func finish() throws {
        try flush()
        try handle.synchronize()
        try handle.close()
    }
}

/// A recording failed; the message says what to do.
public struct RecordingError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
