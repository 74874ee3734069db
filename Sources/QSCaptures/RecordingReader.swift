import Foundation
import KTFormats
import QSModel

/// One update of a recording, as `qsctl feed show` prints it.
public struct RecordedUpdate: Sendable, Equatable {
    /// Byte offset of the frame that holds it.
    public var offset: Int
    /// KT timestamp, or QS log index.
    public var position: UInt64
    /// KT: the origin server id. QS: the entry's origin source id and position.
    public var sid: UInt16?
    public var originSource: String?
    public var originPosition: UInt64?
    /// KT database index (nil for QS).
    public var db: UInt16?
    /// `set`, `remove` (KT) / `delete` (QS), `clear`.
    public var op: String
    /// The key (for a QS clear, the prefix; empty for a KT clear).
    public var key: [UInt8]
    public var value: [UInt8]?
    /// Expiration time, epoch seconds; nil for never.
    public var xt: Int64?
    /// Wall time of the update, ns since the epoch (KT: its timestamp; QS: commit time).
    public var timeNs: UInt64
}

/// What a recording holds, item by item.
public enum RecordedItem: Sendable, Equatable {
    case update(RecordedUpdate)
    case heartbeat(offset: Int, timeNs: UInt64)
    /// A frame whose message cannot be decoded: reported, never applied.
    case undecodable(offset: Int, position: UInt64, reason: String)
}

/// Reads any recording (a KT replication stream or a QS capture, told apart by the QS
/// capture's magic) as a stream of updates, in bounded memory. A damaged file throws
/// `CaptureDamage` (which names the byte offset) after every complete frame.
public struct RecordingReader {
    public enum Kind: String, Sendable { case kt = "kt-replication", qs = "qs-log" }
    public let kind: Kind
    private var kt: KTCaptureReader?
    private var qs: QSCaptureReader?
    private var pending: [RecordedItem] = []

    public init(path: String) throws {
        guard let h = FileHandle(forReadingAtPath: path) else {
            throw DecodingFileReader<ReplicationFrameDecoder>.CannotOpen(path: path)
        }
        let head = [UInt8](try h.read(upToCount: QSCapture.magic.count) ?? Data())
        try? h.close()
        if QSCapture.isCapture(head) {
            kind = .qs
            qs = try QSCaptureReader(path: path)
        } else {
            kind = .kt
            kt = try KTCaptureReader(path: path)
        }
    }

    /// The next item, nil at a clean end.
    public mutating func next() throws -> RecordedItem? {
        while pending.isEmpty {
            if kt != nil {
                guard let (offset, frame) = try kt?.next() else { return nil }
                if let item = Self.item(offset: offset, frame) { return item }
            } else if qs != nil {
                guard let (offset, event) = try qs?.next() else { return nil }
                pending = Self.items(offset: offset, event).reversed()
            } else {
                return nil
            }
        }
        return pending.popLast()
    }

    static func item(offset: Int, _ frame: ReplicationFrame) -> RecordedItem? {
        switch frame {
        case .accepted, .refused: return nil
        case let .heartbeat(ts): return .heartbeat(offset: offset, timeNs: KTClock.wallTimeNs(of: ts))
        case let .update(ts, message):
            if message.isEmpty { return .undecodable(offset: offset, position: ts, reason: "empty message (updates skipped for the recorder's sid)") }
            let m: KTUpdateMessage
            do { m = try KTUpdateMessage(decoding: message) } catch {
                return .undecodable(offset: offset, position: ts, reason: "\(error)")
            }
            var u = RecordedUpdate(offset: offset, position: ts, sid: m.sid, db: m.db, op: "clear", key: [], value: nil, xt: nil,
                                   timeNs: KTClock.wallTimeNs(of: ts))
            switch m.operation {
            case let .set(key, value, xt):
                u.op = "set"
                u.key = key
                u.value = value
                u.xt = xt >= KTExpiration.never ? nil : xt
            case let .remove(key):
                u.op = "remove"
                u.key = key
            case .clear:
                break
            }
            return .update(u)
        }
    }

    static func items(offset: Int, _ event: QSCaptureEvent) -> [RecordedItem] {
        switch event {
        case let .heartbeat(_, rootTime): return [.heartbeat(offset: offset, timeNs: rootTime)]
        case let .entries(list):
            var out = [RecordedItem]()
            for e in list {
                guard let entry = try? LogEntry.decode(e.bytes) else {
                    out.append(.undecodable(offset: offset, position: e.index, reason: "undecodable log entry"))
                    continue
                }
                for op in entry.operations {
                    var u = RecordedUpdate(offset: offset, position: e.index, originSource: entry.origin.sourceID,
                                           originPosition: entry.origin.position, op: "clear", key: [], timeNs: entry.commitTimeNs)
                    switch op {
                    case let .set(k, v, x):
                        u.op = "set"
                        u.key = k
                        u.value = v
                        u.xt = x.map { Int64(clamping: $0) }
                    case let .delete(k):
                        u.op = "delete"
                        u.key = k
                    case let .clearPrefix(p):
                        u.key = p
                    }
                    out.append(.update(u))
                }
            }
            return out
        }
    }
}
