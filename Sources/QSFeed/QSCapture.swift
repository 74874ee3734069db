import Foundation
import NIOCore
import QSModel
import QSWire

/// The QS capture format: a recorded QS log feed (see docs/recordings.md).
///
/// ```
/// magic "QSLOGCAP" (8 bytes)   version:u8 = 1   fromIndex:u64   hash:32 bytes
/// then the subscription's frames as the node sent them: length:u32 type:u8 payload,
/// Entries (0x85) and Heartbeat (0x88) responses of the QS protocol.
/// ```
/// `fromIndex`/`hash` are where the subscription started: the first entry recorded is
/// `fromIndex + 1` and its chained hash continues `hash`.
public enum QSCapture {
    public static let magic: [UInt8] = Array("QSLOGCAP".utf8)
    public static let version: UInt8 = 1
    public static let headerSize = 8 + 1 + 8 + 32

    public static func header(fromIndex: UInt64, hash: [UInt8]) -> [UInt8] {
        var out = magic
        out.append(version)
        for i in (0..<8).reversed() { out.append(UInt8(truncatingIfNeeded: fromIndex >> (UInt64(i) * 8))) }
        out.append(contentsOf: hash.count == 32 ? hash : [UInt8](repeating: 0, count: 32))
        return out
    }

    /// A frame's bytes on the wire (and in the file).
    public static func bytes(of frame: Frame) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(5 + frame.payload.count)
        let n = UInt32(1 + frame.payload.count)
        out.append(contentsOf: [UInt8(n >> 24), UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF), frame.type])
        out.append(contentsOf: frame.payload)
        return out
    }

    /// True when `prefix` (a file's first bytes) starts a QS capture.
    public static func isCapture(_ prefix: [UInt8]) -> Bool { prefix.starts(with: magic) }
}

/// What a QS capture holds, frame by frame.
public enum QSCaptureEvent: Sendable, Equatable {
    /// Consecutive log entries, as the node stored them (index, chained hash, bytes).
    case entries([StoredEntry])
    /// The node's head and the time of its freshest word from the root.
    case heartbeat(head: UInt64, rootTimeNs: UInt64)
}

/// Reads a QS capture file frame by frame, in 1 MiB chunks (a recording larger than
/// memory works), checking every entry: indexes consecutive from the header's, each hash
/// continuing the chain. This is the reader a `capture:FILE` source of `qsqsbridge` wants:
/// `fromIndex`/`fromHash` say where the recording starts, `next()` yields entries to
/// append byte for byte. A damaged or cut file stops with `CaptureDamage` naming the byte offset
/// of the frame; nothing of that frame is returned.
public struct QSCaptureReader {
    public let path: String
    public let fromIndex: UInt64
    public let fromHash: [UInt8]
    public let maxFrameBytes: Int
    private var file: CaptureFileBuffer
    /// Byte offset of the next frame.
    public private(set) var offset = QSCapture.headerSize
    /// Index and hash of the last entry returned (the header's before any).
    public private(set) var lastIndex: UInt64
    public private(set) var lastHash: [UInt8]

    public init(path: String, maxFrameBytes: Int = defaultMaxFrameBytes) throws {
        guard let h = FileHandle(forReadingAtPath: path) else {
            throw CaptureDamage(path: path, offset: 0, reason: "cannot open the file: check the path and permissions", truncated: false)
        }
        let head = [UInt8](try h.read(upToCount: QSCapture.headerSize) ?? Data())
        guard head.count == QSCapture.headerSize, QSCapture.isCapture(head) else {
            try? h.close()
            throw CaptureDamage(path: path, offset: 0, reason: "not a QS capture (no QSLOGCAP header)", truncated: head.count < QSCapture.headerSize && QSCapture.isCapture(head))
        }
        guard head[8] == QSCapture.version else {
            try? h.close()
            throw CaptureDamage(path: path, offset: 8, reason: "unsupported QS capture version \(head[8])", truncated: false)
        }
        self.path = path
        file = CaptureFileBuffer(path: path, handle: h)
        self.maxFrameBytes = maxFrameBytes
        fromIndex = head[9..<17].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        fromHash = Array(head[17..<49])
        lastIndex = fromIndex
        lastHash = fromHash
    }

    /// The next frame's event with its byte offset, nil at a clean end of file.
    public mutating func next() throws -> (offset: Int, event: QSCaptureEvent)? {
        while true {
            let start = offset
            if let length = file.buffer.getInteger(at: file.buffer.readerIndex, as: UInt32.self) {
                let n = Int(length)
                guard n > 0, n <= maxFrameBytes else {
                    throw CaptureDamage(path: path, offset: start, reason: "frame length \(n) is not between 1 and \(maxFrameBytes)", truncated: false)
                }
                if file.buffer.readableBytes >= 4 + n, let bytes = file.buffer.getBytes(at: file.buffer.readerIndex + 4, length: n) {
                    let frame = Frame(type: bytes[0], payload: Array(bytes[1...]))
                    let event = try check(frame, at: start)
                    file.buffer.moveReaderIndex(forwardBy: 4 + n)
                    offset += 4 + n
                    return (start, event)
                }
            }
            guard try file.refill(frameOffset: start) else { return nil }
        }
    }

    private mutating func check(_ frame: Frame, at start: Int) throws -> QSCaptureEvent {
        let response: Response
        do {
            response = try Response.decode(frame)
        } catch {
            throw CaptureDamage(path: path, offset: start, reason: "undecodable frame: \(error)", truncated: false)
        }
        switch response {
        case let .heartbeat(head, rootTime):
            return .heartbeat(head: head, rootTimeNs: rootTime)
        case let .entries(list):
            var index = lastIndex, hash = lastHash
            for e in list {
                guard e.index == index + 1 else {
                    throw CaptureDamage(path: path, offset: start, reason: "entry \(e.index) where \(index + 1) was expected", truncated: false)
                }
                let h = ChainHash.next(previous: hash, entry: e.bytes)
                guard h == e.hash else {
                    throw CaptureDamage(path: path, offset: start, reason: "entry \(e.index): the chained hash does not continue the log (corrupt entry)", truncated: false)
                }
                index = e.index
                hash = h
            }
            lastIndex = index
            lastHash = hash
            return .entries(list)
        default:
            throw CaptureDamage(path: path, offset: start, reason: "frame type 0x\(String(frame.type, radix: 16)) is not an Entries or Heartbeat response", truncated: false)
        }
    }

    public func close() {
        file.close()
    }
}

/// A QS capture as a source of log entries, in the shape of `FeedSource.run(after:deliver:)`
/// (entries carry their index, hash and bytes, which a compatible-mode replay appends
/// verbatim, so the events are `QSCaptureEvent`s rather than `FeedChange`s).
public struct QSCaptureEntries: Sendable {
    public let path: String
    public let maxFrameBytes: Int
    public var name: String { "capture:\(path)" }

    public init(path: String, maxFrameBytes: Int = defaultMaxFrameBytes) {
        self.path = path
        self.maxFrameBytes = maxFrameBytes
    }

    /// The recording does not reach back to the position asked for.
    public struct Gap: Error, CustomStringConvertible, Sendable, Equatable {
        public let path: String
        public let asked: UInt64
        public let recordingStartsAfter: UInt64
        public var description: String {
            "capture \(path) starts after log index \(recordingStartsAfter): it cannot continue a log at index \(asked) (entries \(asked + 1)…\(recordingStartsAfter) are missing)"
        }
    }

    /// Delivers, in order and awaiting each, the entries with an index greater than
    /// `index` (frames holding none are skipped, frames straddling it are trimmed) and
    /// the heartbeats after them. Returns at the end of the file; throws `CaptureDamage`
    /// at a cut or corrupt frame (after every complete frame before it) and `Gap` when
    /// the recording starts after `index`.
    public func run(after index: UInt64, deliver: @escaping @Sendable (QSCaptureEvent) async throws -> Void) async throws {
        var reader = try QSCaptureReader(path: path, maxFrameBytes: maxFrameBytes)
        defer { reader.close() }
        guard reader.fromIndex <= index else {
            throw Gap(path: path, asked: index, recordingStartsAfter: reader.fromIndex)
        }
        while let (_, event) = try reader.next() {
            try Task.checkCancellation()
            switch event {
            case .heartbeat:
                if reader.lastIndex > index { try await deliver(event) }
            case let .entries(list):
                let wanted = list.filter { $0.index > index }
                if !wanted.isEmpty { try await deliver(.entries(wanted)) }
            }
        }
    }
}
