import KTFormats
import QSCaptures
import QSFeed

/// A recorded KT replication stream (`stream.bin`: the acceptance byte, then update and
/// heartbeat frames), read through `KTCaptureReader`. Every complete frame is delivered;
/// a file cut inside a frame, or a damaged frame, stops with an error naming the byte
/// offset, and the damaged frame is never applied.
///
/// An update is applied only once a frame after it vouches for its timestamp: the next
/// update (stamped after it: `KTTimestampOrder`) or a heartbeat at or after it (KT stamps a
/// heartbeat at or after the last update it sent on the connection; a heartbeat more than
/// `heartbeatBelowUpdateNs` below it shows damage). A timestamp damaged upward is so caught
/// before it moves the checkpoint past the records after it, unless by less than the gap to
/// the frame after it. Only an update the recording
/// ends on (`qsctl record --count`, a recorder stopped mid-burst, a cut or damaged frame
/// after it) has nothing to vouch for it: it is applied with the day-ahead bound alone.
public struct KTCaptureSource: FeedSource {
    public let path: String
    public let translator: KTTranslator
    public let maxMessageBytes: Int
    public var name: String { "capture:\(path)" }
    /// How far below the update before it a heartbeat may be stamped. KT stamps a heartbeat
    /// `max(its clock − 1 s, the last update sent on that connection)`: on one connection at
    /// or after the update, but a recorder that connected again resumes in the same file, and
    /// the new connection's first heartbeat may be up to 1 s below the update recorded before
    /// (its clock has only moved on since). Further below, one of the two is damaged.
    static let heartbeatBelowUpdateNs: UInt64 = 2_000_000_000

    public init(path: String, translator: KTTranslator, maxMessageBytes: Int = 64 << 20) {
        self.path = path
        self.translator = translator
        self.maxMessageBytes = maxMessageBytes
    }

    public func run(after position: UInt64, deliver: @escaping @Sendable (FeedEvent) async throws -> Void) async throws {
        var reader: KTCaptureReader
        do {
            reader = try KTCaptureReader(path: path, maxMessageBytes: maxMessageBytes)
        } catch {
            throw FeedError.stop("\(error)")
        }
        defer { reader.close() }
        let corrupt = translator.metrics.corruptFrames
        // Updates go to the consumer in runs (one hop for many); the run is delivered
        // before a heartbeat, at the end, and before any error is thrown.
        var order = KTTimestampOrder()
        /// The newest update read after the position, until the frame after it vouches for it.
        var held: (timestamp: UInt64, message: [UInt8], offset: Int)?
        try await ChangeRun.reading(deliver) { run in
            func applyHeld() throws -> Bool {
                guard let h = held.take() else { return false }
                return run.append(try translator.change(timestamp: h.timestamp, message: h.message))
            }
            while true {
                try Task.checkCancellation()
                let next: (offset: Int, frame: ReplicationFrame)?
                do {
                    next = try reader.next()
                } catch let damage as CaptureDamage {
                    // The recording ends at the damage: the update before it is its last,
                    // as at a clean end.
                    if try applyHeld() { try await run.deliver(deliver) }
                    if !damage.truncated { corrupt.increment() }
                    throw FeedError.stop("\(damage); every complete frame before it was applied")
                }
                // Consumed, so that a set's message reaches the translator unshared (its
                // value keeps the message's storage).
                guard let (offset, frame) = consume next else { break }
                switch consume frame {
                case .accepted: continue
                case .refused: throw FeedError.stop("capture \(path) records a refused replication request (the server had no update log)")
                case let .heartbeat(ts):
                    if let h = held {
                        if h.timestamp > ts &+ Self.heartbeatBelowUpdateNs {
                            corrupt.increment()
                            throw FeedError.stop("capture \(path), the update at byte offset \(h.offset): its timestamp \(h.timestamp) is more than \(Self.heartbeatBelowUpdateNs / 1_000_000_000) s after the heartbeat that follows it at byte offset \(offset) (\(ts)), and KT stamps a heartbeat at its clock less 1 s or later, so one of the two is damaged. Every update before it was applied, none from it on: repair or remove the damaged frame, then start the bridge again")
                        }
                        // At or after it, the heartbeat vouches for it; a little below (a
                        // recorder's new connection: KT's floor is per connection), the next
                        // update will.
                        if h.timestamp <= ts { _ = try applyHeld() }
                    }
                    try await run.deliver(deliver)
                    try await deliver(.heartbeat(sourceTimeNs: KTTranslator.heartbeatWallTimeNs(ts)))
                case let .update(ts, message):
                    do {
                        try order.checkNotAhead(ts, at: "capture \(path), the update at byte offset \(offset)", corrupt: corrupt)
                    } catch {
                        // Damaged alone: the update before it ends the run, as at a cut.
                        if try applyHeld() { try await run.deliver(deliver) }
                        throw error
                    }
                    try order.checkAfterPrevious(ts, at: "capture \(path), the update at byte offset \(offset)" + (held.map { " (or the one before it, at byte offset \($0.offset))" } ?? ""), corrupt: corrupt,
                                                 applied: held.map { "Every update before the one at byte offset \($0.offset) was applied, none from it on" }
                                                     ?? "Every update before it was applied, none from it on")
                    // The update before it is vouched for: stamped before this one.
                    if try applyHeld() { try await run.deliver(deliver) }
                    guard ts > position else { continue }
                    held = (ts, message, offset)
                }
            }
            // The recording's last update: nothing after it to vouch for it.
            if try applyHeld() { try await run.deliver(deliver) }
        }
    }
}
