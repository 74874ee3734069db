import KTFormats
import QSCaptures
import QSFeed

/// A recorded KT replication stream (`stream.bin`: the acceptance byte, then update and
/// heartbeat frames), read through `KTCaptureReader`. Every complete frame is delivered;
/// a file cut inside a frame, or a damaged frame (an update stamped out of order or far
/// ahead: `KTTimestampOrder`), stops with an error naming the byte offset, and the damaged
/// frame is never applied.
public struct KTCaptureSource: FeedSource {
    public let path: String
    public let translator: KTTranslator
    public let maxMessageBytes: Int
    public var name: String { "capture:\(path)" }

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
        // Updates go to the consumer in runs (one hop for many); the run is delivered
        // before a heartbeat, at the end, and before any error is thrown.
        var order = KTTimestampOrder()
        try await ChangeRun.reading(deliver) { run in
            while true {
                try Task.checkCancellation()
                let next: (offset: Int, frame: ReplicationFrame)?
                do {
                    next = try reader.next()
                } catch let damage as CaptureDamage {
                    if !damage.truncated { translator.metrics.corruptFrames.increment() }
                    throw FeedError.stop("\(damage); every complete frame before it was applied")
                }
                // Consumed, so that a set's message reaches the translator unshared (its
                // value keeps the message's storage).
                guard let (offset, frame) = consume next else { break }
                switch consume frame {
                case .accepted: continue
                case .refused: throw FeedError.stop("capture \(path) records a refused replication request (the server had no update log)")
                case let .heartbeat(ts):
                    try await run.deliver(deliver)
                    try await deliver(.heartbeat(sourceTimeNs: KTTranslator.heartbeatWallTimeNs(ts)))
                case let .update(ts, message):
                    try order.check(ts, at: "capture \(path), the update at byte offset \(offset)", corrupt: translator.metrics.corruptFrames)
                    guard ts > position else { continue }
                    if run.append(try translator.change(timestamp: ts, message: message)) { try await run.deliver(deliver) }
                }
            }
        }
    }
}
