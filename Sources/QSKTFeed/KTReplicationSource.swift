import KTFormats
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import QSFeed
import QSModel
import QSNet

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
    /// KT's HTTP RPC on the same port, where the update log's newest timestamp is read
    /// (`WithheldUpdateWatch`); nil: the heartbeats' stamps alone tell withheld updates.
    let logRPC: KTRPCClient?
    /// When the update log is read next, across the connections of this source.
    let logSchedule = NIOLockedValueBox(KTLogCheckSchedule())
    private let logWarnings = RateLimitedLog(window: .seconds(300))

    public init(host: String, port: Int, sid: UInt16, translator: KTTranslator, timeout: Duration = .seconds(10),
                maxMessageBytes: Int = 64 << 20, readsLog: Bool = true,
                group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        client = KTReplicationClient(host: host, port: port, sid: sid, timeout: timeout, maxMessageBytes: maxMessageBytes, group: group)
        self.translator = translator
        // A reading holds the replication stream while it waits: a short timeout.
        logRPC = readsLog ? KTRPCClient(host: host, port: port, timeout: min(timeout, .seconds(3)), maxAnswerBytes: 16 << 20,
                                        connectTimeout: min(timeout, .seconds(3))) : nil
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
        guard let logRPC else { return try await stream(after: position, check: nil, deliver) }
        // The update log's connection lives as long as this stream, served beside it.
        let check = KTLogCheck(rpc: logRPC, schedule: logSchedule, connection: KTLogConnection(rpc: logRPC))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await check.connection.serve() }
            defer { check.connection.finish() }
            try await stream(after: position, check: check, deliver)
        }
    }

    /// One reading of the update log's newest timestamp for `watch`, counted; a failure is
    /// logged (at most every five minutes) and leaves the heartbeats to vouch on their own. A
    /// reading cut off by the task's cancellation (the bridge stopping) is thrown: what it
    /// would have vouched for is not known.
    private func readLog(_ check: KTLogCheck, covering: UInt64, at address: SocketAddress?,
                         _ watch: inout WithheldUpdateWatch) async throws {
        translator.metrics.logReads.increment()
        let started = ContinuousClock.now
        do {
            let newest = try await check.newestLogged(at: address)
            watch.logRead(newest: newest, covering: covering)
            if let unsent = watch.unsent {
                translator.logger.debug("KT's update log holds an update past the last one it sent; the checkpoint waits for it",
                                        metadata: ["logged": "\(unsent)", "last-sent": "\(watch.lastUpdate)"])
            }
            check.schedule.withLockedValue { $0.done(at: .now, took: .now - started, ok: true) }
        } catch {
            if error is CancellationError || Task.isCancelled { throw CancellationError() }
            translator.metrics.logReadFailures.increment()
            check.schedule.withLockedValue { $0.done(at: .now, took: .now - started, ok: false) }
            logWarnings.warning(translator.logger,
                                "cannot read the newest timestamp of KT's update log (ulog_list at \(check.rpc.name)): \(error); until it can (tried again every \(KTLogCheckSchedule.retryAfter)), KT's heartbeat stamps alone tell an update it withheld (see --sid)",
                                peer: check.rpc.name)
        }
    }

    private func stream(after position: UInt64, check: KTLogCheck?,
                        _ deliver: @escaping @Sendable (FeedEvent) async throws -> Void) async throws {
        let translator = self.translator
        var watch = WithheldUpdateWatch(after: position)
        let link = ReplicationLink()
        do {
            // The frames of one read go to the consumer as one run of changes (a heartbeat
            // keeps its place after the changes before it); those read before an error
            // are delivered before it is thrown.
            try await client.streamRuns(after: position, link: link) { frames in
                try await ChangeRun.reading(maxChanges: frames.count, deliver) { run in
                    for frame in frames {
                        switch frame {
                        case let .heartbeat(ts):
                            try await run.deliver(deliver)
                            let proposed: UInt64?
                            switch watch.heartbeat(ts) {
                            case let .vouches(v): proposed = v
                            case let .withheld(evidence):
                                throw KTReplicationClient.Failure.withheld(server: client.name, sid: client.sid,
                                                                           timestamp: evidence.timestamp ?? ts, evidence: evidence.description)
                            }
                            var vouched = proposed
                            if let check {
                                if let covering = watch.wantsLogRead, check.schedule.withLockedValue({ $0.due(at: .now) }) {
                                    try await readLog(check, covering: covering, at: link.address, &watch)
                                }
                                // Without a working reading the stamps decide, unless the log
                                // already showed an update past the last one sent.
                                if !check.schedule.withLockedValue({ $0.failing }) || watch.unsent != nil { vouched = watch.limited(proposed) }
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
            case .refused, .tooLarge, .withheld:
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

/// Tells from KT's heartbeats, and from its update log's newest timestamp where it can read
/// it, that KT read an update it did not send: one whose origin sid equals the client's (KT
/// withholds those; its empty update frame says so only after 256 in a row, and withheld
/// writes would otherwise pass under a heartbeat's position, lost for good).
///
/// An idle heartbeat is stamped `max(clock_pure − 1 s, rts)`, where `clock_pure` is KT's
/// wall clock in whole milliseconds (a multiple of 1,000,000) and `rts` the newest
/// timestamp its reader has read, sent or withheld. A heartbeat stamped after the last
/// update sent is therefore either the clock (a whole millisecond, moving on by 0.1 s or
/// more from one heartbeat to the next) or an update withheld: a stamp with a counter
/// part, or the same stamp twice in a row, is the latter, and stops the bridge at once.
///
/// A heartbeat past the last update proposes to vouch for a second below the older of its
/// own stamp and the one before it, never for its own stamp (a whole-millisecond stamp may
/// be a withheld update that a later heartbeat tells apart). What the stamps cannot tell
/// is a withheld write that is each time the newest: writes withheld at least one a
/// heartbeat (0.1 s and a round trip) stamp every heartbeat with a new whole millisecond,
/// and a write KT's reader reached more than a second after it was written (a bridge
/// catching up, a reader held) leaves the stamps on the clock. So a proposal past the last
/// update goes through only as far as a reading of KT's update log made after it vouches
/// (`ulog_list`: the newest timestamp flushed to it; `logRead`, `limited`): one finding
/// nothing past the last update sent vouches for the proposal it was made for, and later
/// proposals wait for the next (about one a second, `KTLogCheckSchedule`). A logged
/// timestamp past it holds the position at the last update (`unsent`) until an update
/// reaches it, and a heartbeat stamped `unsentMargin` after it (KT's reader, at the end
/// of its log, had read it long before) is a withheld update. Where the log cannot be
/// read, the stamps alone decide.
struct WithheldUpdateWatch {
    enum Verdict: Equatable {
        /// Every update at or before the position (if any) was sent.
        case vouches(UInt64?)
        /// KT read an update it did not send.
        case withheld(Evidence)
    }

    /// What told a withheld update.
    enum Evidence: Equatable, CustomStringConvertible {
        /// A heartbeat stamp with a counter part, or the same stamp twice.
        case stamps
        /// The update log held this timestamp, never sent, long before a heartbeat.
        case log(UInt64)

        var timestamp: UInt64? {
            if case let .log(ts) = self { return ts }
            return nil
        }

        var description: String {
            switch self {
            case .stamps: return "its heartbeat stamps"
            case .log: return "its update log (ulog_list) and heartbeat stamps"
            }
        }
    }

    /// KT flushes its log every 0.1 s, and a heartbeat's stamp is at least its clock less a
    /// second: one stamped this long after a logged update was sent after KT's reader read it.
    static let unsentMargin: UInt64 = 5_000 * 1_000_000
    private(set) var lastUpdate: UInt64
    private var lastHeartbeat: UInt64?
    /// A timestamp KT's update log held past `lastUpdate` when it was read, while no update
    /// sent has reached it.
    private(set) var unsent: UInt64?
    /// How far past `lastUpdate` the update log's readings vouch: proposals past
    /// `max(logged, lastUpdate)` wait for another.
    private var logged: UInt64 = 0
    /// What the last heartbeat proposed to vouch for.
    private var proposed: UInt64?

    init(after position: UInt64) {
        lastUpdate = position
    }

    mutating func update(_ timestamp: UInt64) {
        lastUpdate = max(lastUpdate, timestamp)
        if let unsent, lastUpdate >= unsent { self.unsent = nil }
    }

    /// The heartbeats' own verdict (a proposal, for `limited` to bound by the log).
    mutating func heartbeat(_ timestamp: UInt64) -> Verdict {
        defer { lastHeartbeat = timestamp }
        proposed = nil
        if let unsent, unsent <= UInt64.max - Self.unsentMargin, timestamp >= unsent + Self.unsentMargin {
            return .withheld(.log(unsent))
        }
        if timestamp <= lastUpdate { return .vouches(timestamp) }
        if timestamp % 1_000_000 != 0 || timestamp == lastHeartbeat { return .withheld(.stamps) }
        guard let previous = lastHeartbeat, previous < timestamp else { return .vouches(nil) }
        let margin: UInt64 = 1_000 * 1_000_000
        guard previous > margin else { return .vouches(nil) }
        proposed = previous - margin
        return .vouches(previous - margin)
    }

    /// What a reading of the update log would let the last heartbeat vouch for that it may
    /// not yet (nil: nothing).
    var wantsLogRead: UInt64? {
        guard let proposed, unsent == nil, proposed > max(logged, lastUpdate) else { return nil }
        return proposed
    }

    /// The update log's newest timestamp, read after the heartbeat that proposed `covering`:
    /// nothing logged past the last update vouches for `covering`.
    mutating func logRead(newest: UInt64, covering: UInt64) {
        if newest > lastUpdate {
            if unsent == nil { unsent = newest }
        } else {
            logged = max(logged, covering)
        }
    }

    /// A heartbeat's vouch bounded by what the update log's readings vouch for.
    func limited(_ vouched: UInt64?) -> UInt64? {
        guard let vouched, vouched > lastUpdate else { return vouched }
        return min(vouched, max(logged, lastUpdate))
    }
}
