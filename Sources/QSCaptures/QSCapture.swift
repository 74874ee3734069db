import Foundation
import NIOCore
import QSBytes
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
        var w = ByteWriter(capacity: headerSize)
        w.writeBytes(magic)
        w.writeU8(version)
        w.writeU64(fromIndex)
        w.writeBytes(hash.count == 32 ? hash : [UInt8](repeating: 0, count: 32))
        return w.bytes
    }

    /// A frame's bytes on the wire (and in the file), as `FrameEncoder` writes them.
    public static func bytes(of frame: Frame) -> [UInt8] {
        var w = ByteWriter(capacity: 5 + frame.payload.count)
        w.writeU32(UInt32(1 + frame.payload.count))
        w.writeU8(frame.type)
        w.writeBytes(frame.payload)
        return w.bytes
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

/// Reads a QS capture file frame by frame with the live subscription's own `FrameDecoder`,
/// fed from the file in chunks (a recording larger than memory works), checking every entry: indexes consecutive from the header's, each hash
/// continuing the chain. This is the reader a `capture:FILE` source of `qsqsbridge` wants:
/// `fromIndex`/`fromHash` say where the recording starts, `next()` yields entries to
/// append byte for byte. A damaged or cut file stops with `CaptureDamage` naming the byte offset
/// of the frame; nothing of that frame is returned.
public struct QSCaptureReader {
    public let path: String
    public let fromIndex: UInt64
    public let fromHash: [UInt8]
    public let maxFrameBytes: Int
    private let file: DecodingFileReader<FrameDecoder>
    /// Byte offset of the next frame.
    public var offset: Int { file.offset }
    /// Index and hash of the last entry returned (the header's before any).
    public private(set) var lastIndex: UInt64
    public private(set) var lastHash: [UInt8]

    public init(path: String, maxFrameBytes: Int = defaultMaxFrameBytes) throws {
        guard let h = FileHandle(forReadingAtPath: path) else {
            throw CaptureDamage(path: path, offset: 0, reason: "cannot open the file: check the path and permissions", truncated: false)
        }
        let head = [UInt8](try h.read(upToCount: QSCapture.headerSize) ?? Data())
        try? h.close()
        guard QSCapture.isCapture(head) else {
            throw CaptureDamage(path: path, offset: 0, reason: "not a QS capture (no QSLOGCAP header)", truncated: false)
        }
        guard head.count == QSCapture.headerSize else {
            throw CaptureDamage(path: path, offset: 0, reason: "input ends inside the header (\(head.count) of its \(QSCapture.headerSize) bytes present)", truncated: true)
        }
        var r = ByteReader(head, base: 0)
        try r.skip(QSCapture.magic.count, "magic")
        let version = try r.readU8("version")
        guard version == QSCapture.version else {
            throw CaptureDamage(path: path, offset: 8, reason: "unsupported QS capture version \(version)", truncated: false)
        }
        self.path = path
        self.maxFrameBytes = maxFrameBytes
        fromIndex = try r.readU64("from index")
        fromHash = try r.readBytes(32, "from hash")
        let decoder = FrameDecoder(maxFrameBytes: maxFrameBytes)
        file = try DecodingFileReader(path: path, decoder: decoder,
                                      startOffset: QSCapture.headerSize, maximumBufferSize: decoder.maximumBufferSize)
        lastIndex = fromIndex
        lastHash = fromHash
    }

    /// The next frame's event with its byte offset, nil at a clean end of file.
    public mutating func next() throws -> (offset: Int, event: QSCaptureEvent)? {
        let next: (offset: Int, message: Frame)?
        do {
            next = try file.next() ?? file.finish().first
        } catch let error as DecodeError {
            throw CaptureDamage(path: path, error)
        }
        guard let (start, frame) = next else { return nil }
        return (start, try check(frame, at: start))
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
            // The whole frame or nothing: the chain moves only past a frame that continues it.
            var chain = ChainFollower(index: lastIndex, hash: lastHash)
            if let broken = chain.follow(list).broken {
                throw CaptureDamage(path: path, offset: start, reason: broken, truncated: false)
            }
            lastIndex = chain.index
            lastHash = chain.hash
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
