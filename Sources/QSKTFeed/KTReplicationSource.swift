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
        var watch = WithheldUpdateWatch(after: position)
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
                            guard case let .vouches(vouched) = watch.heartbeat(ts) else {
                                throw KTReplicationClient.Failure.sidClash(server: client.name, sid: client.sid, timestamp: ts)
                            }
                            try await deliver(.heartbeat(sourceTimeNs: KTTranslator.heartbeatWallTimeNs(ts), position: vouched))
                        case let .update(ts, message):
                            watch.update(ts)
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

/// Tells from KT's heartbeats that it read an update it did not send: one whose origin sid
/// equals the client's (KT withholds those; its empty update frame says so only after 256
/// in a row, and a few withheld writes would otherwise pass under a heartbeat's position,
/// lost for good).
///
/// An idle heartbeat is stamped `max(clock_pure − 1 s, rts)`, where `clock_pure` is KT's
/// wall clock in whole milliseconds (a multiple of 1,000,000) and `rts` the newest
/// timestamp its reader has read, sent or withheld. A heartbeat stamped after the last
/// update sent is therefore either the clock (a whole millisecond, moving on by 0.1 s or
/// more from one heartbeat to the next) or an update withheld: a stamp with a counter
/// part, or the same stamp twice in a row, is the latter. A withheld update in the first
/// slot of a millisecond read more than 0.9 s after it was written could pass as the
/// clock; the 256-in-a-row frame still catches a writer that keeps writing.
///
/// A heartbeat past the last update vouches for a second below the older of its own stamp
/// and the one before it, never for its own stamp: a whole-millisecond stamp may be a
/// withheld update that a later heartbeat tells apart (two withheld writes a heartbeat
/// apart each look like the clock once), and every withheld update KT read before a
/// heartbeat keeps the stamps at or above it for a second. A chain of withheld writes
/// longer than that, each the first of its millisecond and one or more every heartbeat,
/// can still pass under the checkpoint before it is told apart (KT's empty frame after 256
/// stops it). One at or before the last update vouches for itself.
struct WithheldUpdateWatch {
    enum Verdict: Equatable {
        /// Every update at or before the position (if any) was sent.
        case vouches(UInt64?)
        /// KT read an update it did not send.
        case withheld
    }

    private(set) var lastUpdate: UInt64
    private var lastHeartbeat: UInt64?

    init(after position: UInt64) {
        lastUpdate = position
    }

    mutating func update(_ timestamp: UInt64) {
        lastUpdate = max(lastUpdate, timestamp)
    }

    mutating func heartbeat(_ timestamp: UInt64) -> Verdict {
        defer { lastHeartbeat = timestamp }
        if timestamp <= lastUpdate { return .vouches(timestamp) }
        if timestamp % 1_000_000 != 0 || timestamp == lastHeartbeat { return .withheld }
        guard let previous = lastHeartbeat, previous < timestamp else { return .vouches(nil) }
        let margin: UInt64 = 1_000 * 1_000_000
        return previous > margin ? .vouches(previous - margin) : .vouches(nil)
    }
}
