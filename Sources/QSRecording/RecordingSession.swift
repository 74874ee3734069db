import Foundation
import QSNet

/// The bookkeeping every recorder shares: the capture file, the sidecar, the stop
/// conditions. A recorder hands it whole frames as they arrive; it writes them, counts
/// them, refreshes the sidecar about once a second, and says when to stop.
///
/// Unchecked `Sendable`: one recorder task uses it, one frame at a time; it crosses into
/// the child task that reads the connection only so a timer can cancel that task.
final class RecordingSession: @unchecked Sendable {
    let writer: CaptureFileWriter
    let path: String
    let stop: StopConditions
    private(set) var meta: RecordingMeta
    private var lastMetaWrite = ContinuousClock.now
    private let started = ContinuousClock.now
    /// Whether the file's preamble (acceptance byte, header) is written: a reconnect does
    /// not write it again.
    var wrotePreamble = false
    var backoff = Backoff()
    /// Whether the source ever answered: a source that never did is an error to report,
    /// not one to retry forever.
    var connected = false
    /// QS recordings: the chained hash at `resumePosition`, to resubscribe after a reconnect.
    var resumeHash: [UInt8] = []

    init(path: String, meta: RecordingMeta, stop: StopConditions) throws {
        writer = try CaptureFileWriter(path: path)
        self.path = path
        self.meta = meta
        self.stop = stop
        try meta.write(beside: path)
    }

    /// The position to resume from after a reconnect: the last one recorded, else `from`.
    var resumePosition: UInt64 { meta.lastPosition ?? meta.from }

    /// Why the session should end now without another frame, if it should (the duration).
    var expired: Bool {
        guard let d = stop.duration else { return false }
        return ContinuousClock.now - started >= d
    }

    /// Time left before `--duration` runs out, nil without one.
    var remaining: Duration? {
        stop.duration.map { $0 - (ContinuousClock.now - started) }
    }

    /// Writes bytes that are not a frame of the feed (the acceptance byte, a file header).
    func writePreamble(_ bytes: [UInt8]) throws {
        guard !wrotePreamble else { return }
        wrotePreamble = true
        try writer.append(frame: bytes)
        meta.bytes = writer.bytes
    }

    /// A heartbeat at `position` (a KT heartbeat's timestamp, a QS head). Returns the stop
    /// reason when the source has reached `--until`: the heartbeat is then not written.
    func heartbeat(_ frame: [UInt8], position: UInt64) throws -> String? {
        if let until = stop.untilPosition, position >= until { return "until" }
        try writer.append(frame: frame)
        meta.frames += 1
        meta.heartbeats += 1
        return try tick()
    }

    /// An update frame holding updates at `first...last`, counted under `keys` (a KT
    /// database, QS source ids). Returns the stop reason when a condition is met; a frame
    /// whose first position is past `--until` is not written.
    func update(_ frame: [UInt8], first: UInt64, last: UInt64, keys: [String]) throws -> String? {
        if let until = stop.untilPosition, first > until { return "until" }
        try writer.append(frame: frame)
        meta.frames += 1
        meta.updates += keys.count
        if meta.firstPosition == nil { meta.firstPosition = first }
        meta.lastPosition = last
        for k in keys { meta.databases[k, default: 0] += 1 }
        backoff.reset()
        if let c = stop.count, meta.updates >= c { return "count" }
        if let until = stop.untilPosition, last >= until { return "until" }
        return try tick()
    }

    private func tick() throws -> String? {
        if expired { return "duration" }
        if ContinuousClock.now - lastMetaWrite >= .seconds(1) {
            lastMetaWrite = ContinuousClock.now
            meta.bytes = writer.bytes
            meta.recordedAt = RecordingMeta.now()
            try writer.flush()
            try meta.write(beside: path)
        }
        return nil
    }

    /// Flushes and fsyncs the file and writes the final sidecar.
    func finish(stoppedBy: String, complete: Bool) throws -> RecordingMeta {
        try writer.finish()
        meta.bytes = writer.bytes
        meta.recordedAt = RecordingMeta.now()
        meta.complete = complete
        meta.stoppedBy = stoppedBy
        try meta.write(beside: path)
        return meta
    }
}

/// Runs `body`, cancelling it when the session's `--duration` runs out (it then returns
/// normally; the caller sees `session.expired`).
func withDeadline(_ session: RecordingSession, _ body: @escaping @Sendable () async throws -> Void) async throws {
    guard let left = session.remaining else {
        try await body()
        return
    }
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await body() }
        group.addTask { try await Task.sleep(for: max(left, .zero)) }
        try await group.next()
        group.cancelAll()
    }
}
