import Foundation
import KTFormats
import NIOCore
import QSFeed

/// A recorded KT replication stream (`stream.bin`: the acceptance byte, then update and
/// heartbeat frames), read in chunks so a recording larger than memory works. Every
/// complete frame is delivered; a file cut inside a frame, or a damaged frame, stops with
/// an error naming the byte offset.
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
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw FeedError.stop("cannot open capture file \(path): check the path and permissions")
        }
        defer { try? handle.close() }
        var decoder = BoundedReplicationDecoder(maxMessageBytes: maxMessageBytes)
        var buffer = ByteBuffer()
        var eof = false
        while true {
            try Task.checkCancellation()
            let frame: ReplicationFrame?
            do {
                frame = try decoder.next(&buffer)
            } catch let e as DamagedStreamError {
                translator.metrics.corruptFrames.increment()
                throw FeedError.stop("capture \(path) is damaged at byte offset \(e.offset): \(e.reason); every complete frame before it was applied")
            } catch let e as ReplicationStreamError {
                translator.metrics.corruptFrames.increment()
                throw FeedError.stop("capture \(path) is damaged at byte offset \(e.offset): \(e); every complete frame before it was applied")
            }
            guard let frame else {
                if eof {
                    if buffer.readableBytes > 0 {
                        throw FeedError.stop("capture \(path) ends inside a frame at byte offset \(decoder.consumed) (\(buffer.readableBytes) bytes of it present, the recording was cut short); every complete frame before it was applied")
                    }
                    return
                }
                buffer.discardReadBytes()
                let chunk = try handle.read(upToCount: 1 << 20) ?? Data()
                if chunk.isEmpty { eof = true } else { buffer.writeBytes(chunk) }
                continue
            }
            switch frame {
            case .accepted: continue
            case .refused: throw FeedError.stop("capture \(path) records a refused replication request (the server had no update log)")
            case let .heartbeat(ts): try await deliver(.heartbeat(sourceTimeNs: KTTranslator.wallTimeNs(ts)))
            case let .update(ts, message):
                guard ts > position else { continue }
                try await deliver(.change(try translator.change(timestamp: ts, message: message)))
            }
        }
    }
}
