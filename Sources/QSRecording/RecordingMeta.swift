import Foundation

/// The sidecar `FILE.meta.json` of a recording: what was recorded, from where, and how far.
public struct RecordingMeta: Codable, Sendable, Equatable {
    /// `kt-replication` (the `stream.bin` format) or `qs-log` (see docs/recordings.md).
    public var format: String
    /// The source as given, e.g. `kt://10.0.0.1:1978` or `qs://10.0.0.2:7400`.
    public var source: String
    /// The sid presented to KT (KT recordings only).
    public var sid: UInt16?
    /// The position asked for: updates after it (a KT timestamp or a QS log index).
    public var from: UInt64
    /// First and last position recorded (KT timestamps, QS log indexes).
    public var firstPosition: UInt64?
    public var lastPosition: UInt64?
    /// Frames written (updates, heartbeats, entry batches), not counting the header.
    public var frames: Int
    /// Updates written: KT update messages, or QS log entries.
    public var updates: Int
    public var heartbeats: Int
    /// Updates per KT database index (KT), or log entries per origin source id (QS).
    public var databases: [String: Int]
    public var bytes: Int
    /// Epoch seconds when recording started and when it ended (or was last updated).
    public var startedAt: UInt64
    public var recordedAt: UInt64
    /// False while recording (and in the sidecar of a killed recorder).
    public var complete: Bool
    /// Why recording stopped: `count`, `until`, `duration`, `signal`; nil while recording.
    public var stoppedBy: String?

    enum CodingKeys: String, CodingKey {
        case format, source, sid, from, frames, updates, heartbeats, databases, bytes, complete
        case firstPosition = "first_ts", lastPosition = "last_ts", startedAt = "started_at", recordedAt = "recorded_at"
        case stoppedBy = "stopped_by"
    }

    public init(format: String, source: String, sid: UInt16?, from: UInt64) {
        self.format = format
        self.source = source
        self.sid = sid
        self.from = from
        frames = 0
        updates = 0
        heartbeats = 0
        databases = [:]
        bytes = 0
        startedAt = Self.now()
        recordedAt = startedAt
        complete = false
    }

    static func now() -> UInt64 { UInt64(Date().timeIntervalSince1970) }

    /// The sidecar path of a recording.
    public static func path(for recording: String) -> String { recording + ".meta.json" }

    /// Writes the sidecar atomically (a temporary file renamed over it).
    public func write(beside recording: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let data = try encoder.encode(self)
        try data.write(to: URL(fileURLWithPath: Self.path(for: recording)), options: .atomic)
    }

    public static func read(beside recording: String) throws -> RecordingMeta {
        try JSONDecoder().decode(RecordingMeta.self, from: Data(contentsOf: URL(fileURLWithPath: path(for: recording))))
    }
}

/// When a recorder stops by itself (besides a signal).
public struct StopConditions: Sendable, Equatable {
    /// Stop after this many updates.
    public var count: Int?
    /// Stop once the source reaches this position: updates after it are not recorded.
    public var untilPosition: UInt64?
    /// Stop after this long.
    public var duration: Duration?

    public init(count: Int? = nil, untilPosition: UInt64? = nil, duration: Duration? = nil) {
        self.count = count
        self.untilPosition = untilPosition
        self.duration = duration
    }
}
