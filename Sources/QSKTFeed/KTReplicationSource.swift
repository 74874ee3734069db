import KTFormats
import NIOCore
import NIOPosix
import QSFeed
import QSModel

/// Live replication from a KT server through `KTReplicationClient`: each update frame
/// becomes a feed change, each heartbeat a feed heartbeat. While the bridge waits on the
/// root, nothing more is read from KT, which keeps its own log.
public struct KTReplicationSource: FeedSource {
    public let client: KTReplicationClient
    public let translator: KTTranslator

    public var name: String { client.name }
    /// KT sends a heartbeat every second when it has no update to send.
    public var heartbeatInterval: Duration? { .seconds(1) }
    public var silenceTimeout: Duration? { client.timeout }
    public var sid: UInt16 { client.sid }

    public init(host: String, port: Int, sid: UInt16, translator: KTTranslator, timeout: Duration = .seconds(10),
                maxMessageBytes: Int = 64 << 20, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        client = KTReplicationClient(host: host, port: port, sid: sid, timeout: timeout, maxMessageBytes: maxMessageBytes, group: group)
        self.translator = translator
    }

    /// Checks that KT accepts a replication connection (it runs with an update log) without
    /// reading any update: what an initial copy makes sure of before it starts.
    public func probe() async throws {
        struct Accepted: Error {}
        do {
            try await client.stream(after: KTClock.pure(nowMillis: wallClockNanoseconds() / 1_000_000)) { frame in
                throw Accepted()
            }
        } catch is Accepted {
        } catch let failure as KTReplicationClient.Failure {
            if case .refused = failure { throw FeedError.stop("\(failure); the feed after the initial copy needs it") }
            throw failure
        }
    }

    public func run(after position: UInt64, deliver: @escaping @Sendable (FeedEvent) async throws -> Void) async throws {
        let translator = self.translator
        do {
            // The frames of one read go to the consumer as one run of changes (a heartbeat
            // keeps its place after the changes before it); those read before an error
            // are delivered before it is thrown.
            try await client.streamRuns(after: position) { frames in
                try await ChangeRun.reading(maxChanges: frames.count, deliver) { run in
                    for frame in frames {
                        switch frame {
                        case let .heartbeat(ts):
                            try await run.deliver(deliver)
                            try await deliver(.heartbeat(sourceTimeNs: KTTranslator.heartbeatWallTimeNs(ts), position: ts))
                        case let .update(ts, message):
                            guard ts > position else { continue }
                            if run.append(try translator.change(timestamp: ts, message: message)) { try await run.deliver(deliver) }
                        case .accepted, .refused:
                            continue
                        }
                    }
                }
            }
        } catch let failure as KTReplicationClient.Failure {
            switch failure {
            case .refused, .tooLarge:
                throw FeedError.stop("\(failure)")
            case .sidClash:
                translator.metrics.skippedBySID.increment()
                throw FeedError.stop("\(failure)")
            case let .damaged(server, reason):
                translator.metrics.corruptFrames.increment()
                throw FeedError.corrupt("\(server): \(reason)")
            case .closed:
                throw failure
            }
        }
    }
}
