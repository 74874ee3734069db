import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import QSBytes
import QSClient
import QSNet
import QSModel
import QSStore
import QSWire
import ServiceLifecycle

/// A replica's metrics.
public struct ReplicaMetrics: Sendable {
    public let head = Gauge(label: "qs_replica_head_index")
    public let lagEntries = Gauge(label: "qs_replica_lag_entries")
    public let rootAge = Gauge(label: "qs_replica_root_age_seconds")
    public let subscribed = Gauge(label: "qs_replica_subscribed")
    public let switches = Counter(label: "qs_replica_upstream_switches_total")
    public let diverged = Counter(label: "qs_replica_diverged_total")
    public let bootstraps = Counter(label: "qs_replica_bootstraps_total")
    public let bootstrapBytes = Counter(label: "qs_replica_bootstrap_bytes_received_total")
    public let bootstrapsResumed = Counter(label: "qs_replica_bootstraps_resumed_total")
    public let bootstrapsRefused = Counter(label: "qs_replica_bootstraps_refused_total")
    public let entriesApplied = Counter(label: "qs_replica_entries_applied_total")
    public let diskFullWaits = Counter(label: "qs_replica_disk_full_waits_total")
    public let repairs = Counter(label: "qs_replica_repairs_total")
    public let rebootstraps = Counter(label: "qs_replica_rebootstraps_total")
    public let subscriptions = Counter(label: "qs_replica_subscriptions_total")
    public let upstreamsLeft = Counter(label: "qs_replica_upstreams_left_total")
    public let damagedEntries = Counter(label: "qs_replica_damaged_entries_total")

    public init() {}
}

/// A replica's upstream follower: subscribes to the first healthy upstream of its list
/// from its own head and hash, applies entries many per transaction, and moves to the
/// next upstream when the current one is gone, refuses it (`diverged`, `behind`), or
/// reports a root word older than `staleAfter`. An empty replica, or one behind what its
/// upstream retains, bootstraps from a snapshot first. The node's own subscribers are
/// served independently and stay connected while it changes upstream.
public final class ReplicaService: Service, Sendable {
    let core: NodeCore
    let group: any EventLoopGroup
    let staleAfter: Duration
    /// This node's own write addresses as bound: an upstream that turns out to be one of
    /// them (another spelling of itself) is left (`selfReached`).
    let own: @Sendable () -> [Endpoint]
    /// Presented to every upstream on subscribe and snapshot (`--upstream-token-file`).
    let upstreamToken: [UInt8]
    let logger: Logger
    public let metrics = ReplicaMetrics()
    /// When this service was made (ns since the epoch): the root age before any word of the root.
    private let startedNs = wallClockNanoseconds()
    /// One line a minute an upstream for each: a stale upstream is left and tried again
    /// every second or two.
    private let leaving = RateLimitedLog(window: .seconds(60), byHost: false), subscribing = RateLimitedLog(window: .seconds(60), byHost: false)
    private let skewed = RateLimitedLog(window: .seconds(60), byHost: false)
    /// An upstream refused as another history or as behind is tried again every second or
    /// so (it may be fixed): said once a minute per upstream, counted every time.
    private let refusedLog = RateLimitedLog(window: .seconds(60), byHost: false)
    private let upstreamList: NIOLockedValueBox<[Endpoint]>
    /// What the follower remembers between attempts (see `Memory`).
    private let memory = NIOLockedValueBox(Memory())

    /// Snapshots refused or failed, the one repair, and an operator's rebootstrap request.
    struct Memory {
        /// Upstreams whose snapshot did not contain this replica's head: not fetched again
        /// (until an operator's rebootstrap or a restart).
        var refused = Set<String>()
        /// Upstreams whose snapshot failed (unreadable, damaged, cut): not fetched again
        /// before the instant given, which backs off from 30 s to 10 min.
        var failed = [String: (until: ContinuousClock.Instant, backoff: Backoff)]()
        /// Whether the store's damage was already repaired from an upstream once.
        var repairTried = false
        /// An operator's `qsctl rebootstrap --from X`, not yet carried out.
        var rebootstrap: Endpoint?
    }

    public init(core: NodeCore, upstreams: [Endpoint], staleAfter: Duration, upstreamToken: [UInt8] = [],
                group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, own: @escaping @Sendable () -> [Endpoint] = { [] },
                logger: Logger) {
        self.core = core
        self.own = own
        self.upstreamToken = upstreamToken
        self.group = group
        self.staleAfter = staleAfter
        self.logger = logger
        upstreamList = NIOLockedValueBox(upstreams)
    }

    /// What the replica knows of its upstream as of now (the node's one status value).
    public var status: UpstreamStatus { core.upstreamStatus }

    /// Records the gauges computed from the present (the root word's age, the lag,
    /// subscribed), right before a scrape.
    public func refreshGauges() {
        let s = status
        // Before any word of the root, the time since the replica started: 0 would say fresh.
        metrics.rootAge.record(s.rootAgeSeconds ?? (s.nowNs > startedNs ? Double(s.nowNs - startedNs) / 1e9 : 0))
        // Nothing heard from the upstream moved to: the last figure stays (0 would say
        // "caught up" while the replica sits on an upstream that refuses it).
        if s.upstreamHeardNs > 0 { metrics.lagEntries.record(Double(s.lagEntries)) }
        metrics.subscribed.record(s.subscribed ? 1 : 0)
    }
    public var upstreams: [Endpoint] { upstreamList.withLockedValue { $0 } }

    /// Replaces the upstream list at run time. The current subscription continues if its
    /// upstream is still listed; otherwise the replica moves at its next check.
    public func setUpstreams(_ list: [Endpoint]) {
        upstreamList.withLockedValue { $0 = list }
        logger.notice("upstream list changed", metadata: ["upstreams": "\(list.map(\.description).joined(separator: ","))"])
    }

    enum FollowEnd: Error, CustomStringConvertible {
        case stale(Double)
        case refused(ErrorCode?, String)
        case closed
        case delisted
        case interrupted
        case backingOff(String)
        /// Entries the upstream sent that this node cannot append (`AppendError`).
        case damaged(String)
        /// No heartbeat (and no whole frame of any kind since) for so many seconds.
        case silent(Double)

        var description: String {
            switch self {
            case let .stale(age): return "the root's freshest word through this upstream is \(Int(age)) s old"
            case let .refused(code, message): return "upstream refused (\(code.map { "\($0)" } ?? "?")): \(message)"
            case .closed: return "upstream closed the connection"
            case .delisted: return "upstream no longer in the list"
            case .interrupted: return "a repair or an operator's rebootstrap comes first"
            case let .backingOff(why): return why
            case let .damaged(why): return why
            case let .silent(seconds): return "the upstream sent no heartbeat for \(Int(seconds)) s while this node waited (it sends one every second): hung, trickling, or not a QS node"
            }
        }
    }

    public func run() async throws {
        do {
            try await cancelWhenGracefulShutdown {
                try await self.loop()
            }
        } catch is CancellationError {
            logger.info("replication stopped")
        }
    }

    private func loop() async throws {
        var position = 0
        var backoff = Backoff(initial: .milliseconds(100), cap: .seconds(2))
        // A full disk is not cured by another upstream: wait longer and longer (5 s to 5 min).
        var roomBackoff = Backoff(initial: .seconds(5), cap: .seconds(300))
        var current: Endpoint?
        var previous: Endpoint?
        while !Task.isCancelled {
            let list = upstreams
            guard !list.isEmpty else {
                try await Task.sleep(for: .seconds(1))
                continue
            }
            // Stay on the same upstream if it is still listed, else take the next.
            let up: Endpoint
            if let c = current, list.contains(c) {
                up = c
            } else {
                up = list[position % list.count]
            }
            if let previous, previous != up {
                metrics.switches.increment()
                logger.notice("moving upstream", metadata: ["from": "\(previous)", "to": "\(up)"])
            }
            let moved = previous != up
            previous = up
            current = up
            core.updateUpstream {
                $0.upstream = up.description
                // The head heard from the upstream left says nothing of this one.
                if moved {
                    $0.upstreamHead = 0
                    $0.upstreamHeardNs = 0
                }
            }
            var moveOn = true
            var storageFailure: WriteFailure?
            do {
                if let target = memory.withLockedValue({ m in defer { m.rebootstrap = nil }; return m.rebootstrap }) {
                    try await rebootstrap(from: target)
                    continue
                }
                if core.store.integrity.problem != nil, let mine = try await repairOnce(from: up) {
                    try await bootstrap(from: up, continuing: mine)
                    core.store.integrity.clear()
                    logger.notice("repaired: the store's contents were replaced by a checked snapshot of the upstream",
                                  metadata: ["upstream": "\(up)"])
                }
                // An empty store takes a snapshot rather than the whole log, unless the
                // upstream is empty too (its snapshot holds nothing: following it is enough).
                if try await core.store.head().index == 0 {
                    // Itself (another spelling of its own address) is left here, before a
                    // snapshot is asked of it; another failure to read the head is the
                    // snapshot's to report.
                    var theirs: Head?
                    do { theirs = try await upstreamHead(up) } catch let error as ConfigError { throw error } catch {}
                    if theirs?.index != 0 { try await bootstrap(from: up, continuing: nil) }
                }
                try await follow(up)
            } catch FollowEnd.refused(.needsBootstrap, let message) {
                let mine = try await core.store.head()
                if memory.withLockedValue({ $0.refused.contains(up.description) }) {
                    logger.debug("behind what the upstream retains, whose history was refused before", metadata: ["upstream": "\(up)"])
                } else {
                    logger.warning("behind what the upstream retains: bootstrapping", metadata: ["upstream": "\(up)", "detail": "\(message)"])
                    do {
                        try await bootstrap(from: up, continuing: mine.index > 0 ? mine : nil)
                        moveOn = false
                    } catch StoreError.snapshotDiverged(let mine, let theirs) {
                        let error = StoreError.snapshotDiverged(mine: mine, theirs: theirs)
                        memory.withLockedValue { _ = $0.refused.insert(up.description) }
                        core.updateUpstream { $0.leftBecause = "\(up)'s snapshot is another history (qsctl rebootstrap --from \(up) replaces this store with it)" }
                        metrics.diverged.increment()
                        logger.error("upstream's snapshot is another history: refused, not fetched again; moving on (qsctl rebootstrap --from \(up) replaces this store with it)",
                                     metadata: ["upstream": "\(up)", "detail": "\(error)"])
                    } catch is CancellationError {
                        return
                    } catch FollowEnd.backingOff(let why) {
                        logger.debug("bootstrap postponed", metadata: ["upstream": "\(up)", "reason": "\(why)"])
                    } catch {
                        storageFailure = WriteFailure.classify(error)
                        logger.error("bootstrap failed", metadata: ["upstream": "\(up)", "error": "\(error)"])
                    }
                }
            } catch FollowEnd.refused(.diverged, let message) {
                core.updateUpstream { $0.leftBecause = "\(up) has another history (qsctl rebootstrap --from \(up) replaces this store with it)" }
                metrics.diverged.increment()
                refusedLog.log(logger, .error, "upstream has another history: refused, moving on", peer: up.description,
                               metadata: ["upstream": "\(up)", "detail": "\(message)"])
            } catch FollowEnd.refused(.behind, let message) {
                // This replica is ahead of the upstream: the upstream is behind, or it is
                // another history altogether (a foreign or forked root), which "behind"
                // would hide. This replica's entry at the upstream's head tells them apart.
                let theirs = try? await upstreamHead(up)
                var mine: [UInt8]?
                if let theirs { mine = (try? await core.store.hash(at: theirs.index)) ?? nil }
                if let theirs, let mine, mine != theirs.hash {
                    core.updateUpstream { $0.leftBecause = "\(up) has another history (qsctl rebootstrap --from \(up) replaces this store with it)" }
                    metrics.diverged.increment()
                    refusedLog.log(logger, .error, "upstream has another history: its head differs from this replica's entry at the same index, so it is not merely behind; refused, moving on (qsctl rebootstrap --from \(up) replaces this store with it)",
                                   peer: up.description,
                                   metadata: ["upstream": "\(up)", "index": "\(theirs.index)", "theirs": "\(hexString(theirs.hash))", "mine": "\(hexString(mine))"])
                } else {
                    let compared = theirs == nil ? "its head could not be read" : mine == nil ? "this replica no longer retains the entry at its head to compare" : "same history"
                    let ours = (try? await core.store.head().index).map { ", this replica's \($0)" } ?? ""
                    core.updateUpstream {
                        $0.leftBecause = "\(up) is behind this replica (its head \(theirs.map { String($0.index) } ?? "unknown")\(ours)): it is taken once it has caught up (is whatever feeds it running?)"
                    }
                    refusedLog.log(logger, .warning, "upstream is behind this replica: moving on", peer: up.description,
                                   metadata: ["upstream": "\(up)", "detail": "\(message)", "history": "\(compared)"])
                }
            } catch is CancellationError {
                return
            } catch FollowEnd.interrupted {
                core.updateUpstream { $0.subscribed = false }
                continue
            } catch FollowEnd.backingOff(let why) {
                logger.debug("bootstrap postponed", metadata: ["upstream": "\(up)", "reason": "\(why)"])
            } catch FollowEnd.delisted {
                logger.notice("leaving upstream: no longer in the list", metadata: ["upstream": "\(up)"])
                position = 0
                current = nil
                continue
            } catch {
                if Task.isCancelled { return }
                let error = await unlistenedSelf(up, error) ?? error
                storageFailure = WriteFailure.classify(error)
                core.updateUpstream { $0.leftBecause = "\(error)" }
                metrics.upstreamsLeft.increment()
                leaving.warning(logger, "leaving upstream", peer: up.description, metadata: ["upstream": "\(up)", "reason": "\(error)"])
            }
            core.updateUpstream { $0.subscribed = false }
            if let storageFailure {
                // Every upstream would meet the same disk: stay on this one and wait.
                let delay = roomBackoff.next()
                metrics.diskFullWaits.increment()
                logger.error("\(storageFailure.rawValue): waiting before trying again", metadata: [
                    "upstream": "\(up)", "retry-in": "\(delay)", "remedy": "\(storageFailure.remedy)"])
                try await waitForRoom(delay, watching: up)
                continue
            }
            roomBackoff.reset()
            if moveOn {
                position = ((list.firstIndex(of: up) ?? position) + 1) % max(list.count, 1)
                current = nil
                if position == 0 {
                    try await Task.sleep(for: backoff.next())
                }
            } else {
                backoff.reset()
            }
        }
    }

    private func connect(_ up: Endpoint, arrivals: ByteArrivals? = nil) async throws -> NIOAsyncChannel<Frame, Frame> {
        try await openFrameChannel(to: up, arrivals: arrivals, group: group)
    }

    /// The listener of this node's a connection to `remote` reached, nil when another's.
    func selfReached(_ remote: SocketAddress) -> String? {
        let own = self.own()
        if let path = remote.pathname {
            return own.contains(.unix(path: path)) ? "unix:\(path)" : nil
        }
        guard let ip = remote.ipAddress, let port = remote.port, HostAddress.reachesOwn(ip: ip, port: port, own: own) else { return nil }
        return remote.peerDescription
    }

    /// Whether `up`, whose connection reached `remote`, is this node: the far end is one of
    /// its listener's addresses (`selfReached`, no I/O), confirmed by the node id that
    /// address answers with, read with one of this node's own tokens (an address of this
    /// machine may forward elsewhere: a Kubernetes service address under IPVS sits on a
    /// local interface). Nil when it is another node, or does not answer as this one.
    func itself(_ up: Endpoint, remote: SocketAddress) async -> String? {
        guard let listener = selfReached(remote), let mine = try? await core.store.identity(),
              let client = try? await QSClient.connect(to: up, readToken: core.ownToken, requestTimeout: .seconds(2)) else { return nil }
        defer { Task { await client.close() } }
        guard let json = try? await client.status(), NodeStatus.parse(json)?["node_id"] as? String == mine else { return nil }
        return listener
    }

    /// `error` in words naming the cause when `up` could not be connected to because it is
    /// this replica before it listens: an empty replica bootstraps before it binds its
    /// listener, so itself given by a host name or the machine's address is refused, not
    /// reached (`itself` tells once connected). Nil for any other failure or upstream.
    func unlistenedSelf(_ up: Endpoint, _ error: any Error) async -> ConfigError? {
        await Self.unlistenedSelf(up, error, own: own())
    }

    /// As `unlistenedSelf(_:_:)`, given the node's own write addresses (as configured when
    /// not bound yet): also for the empty replica's first bootstrap, before the node runs.
    static func unlistenedSelf(_ up: Endpoint, _ error: any Error, own: [Endpoint]) async -> ConfigError? {
        guard case let .tcp(host, port) = up, refused(error),
              let ip = await HostAddress.ownAddress(host: host, port: port, own: own) else { return nil }
        return ConfigError("upstream \(up) is this replica itself: it names this machine's address \(ip) and this replica's own port \(port), where nothing listens until the replica has bootstrapped (the connection was refused); give the address of the node it follows (--upstream-file, read again each round, or POST /upstream once the store is open)")
    }

    /// Whether a connection failed because nothing listens at the address (as NIO or
    /// `QSClient` reports it).
    static func refused(_ error: any Error) -> Bool {
        switch error {
        case let e as IOError: return e.errnoCode == ECONNREFUSED
        case let e as NIOConnectionError:
            return !e.connectionErrors.isEmpty && e.connectionErrors.allSatisfy { ($0.error as? IOError)?.errnoCode == ECONNREFUSED }
        case let ClientError.connectionFailed(why): return why == String(cString: strerror(ECONNREFUSED))
        default: return false
        }
    }

    func itselfError(_ up: Endpoint, _ listener: String) -> ConfigError {
        ConfigError("upstream \(up) is this replica itself (the connection reached its own write listener, \(listener)): give the address of the node it follows (POST /upstream, --upstream-file)")
    }

    /// Subscribes from this node's head and applies what the upstream streams.
    private func follow(_ up: Endpoint) async throws {
        let arrivals = ByteArrivals()
        let channel = try await connect(up, arrivals: arrivals)
        // Itself under another spelling (a host name, the machine's address with a wildcard
        // --listen, localhost): it would follow its own log and say "subscribed, behind 0".
        if let remote = channel.channel.remoteAddress, let itself = await itself(up, remote: remote) {
            try? await channel.channel.close()
            throw itselfError(up, itself)
        }
        let core = self.core
        try await channel.executeThenClose { inbound, outbound in
            let head = try await core.store.head()
            try await outbound.write(Request.subscribe(fromIndex: head.index, hash: head.hash, token: self.upstreamToken).frame())
            self.metrics.subscriptions.increment()
            self.subscribing.log(self.logger, .info, "subscribing", peer: up.description, metadata: ["upstream": "\(up)", "from": "\(head.index)"])
            // A store installed before the node started (or reopened) reports its head now,
            // not at the first entry applied.
            self.metrics.head.record(Double(head.index))
            var rootWord = RootWord(since: wallClockNanoseconds())
            // Judged on a timer while this node waits for a frame, not only when a heartbeat
            // arrives: an upstream trickling a byte every few seconds (never a whole frame)
            // or sending empty entries frames and no heartbeat kept the replica for good,
            // though a healthy upstream heartbeats every second when idle.
            let watch = NIOLockedValueBox(SubscriptionWatch(wordFromNs: rootWord.since))
            let staleAfter = self.staleAfter
            let watchdog = Task { [channel] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: .seconds(1))
                    let received = arrivals.received
                    // Judged and recorded in one step, only while the follower still waits.
                    let verdict = watch.withLockedValue { w -> FollowEnd? in
                        w.note(received: received)
                        guard let v = w.judge(staleAfter: staleAfter) else { return nil }
                        w.verdict = v
                        return v
                    }
                    if verdict != nil {
                        channel.channel.close(promise: nil)
                        return
                    }
                }
            }
            defer { watchdog.cancel() }
            watch.withLockedValue { $0.waitingSince = .now }
            do {
                for try await frame in inbound {
                    watch.withLockedValue { $0.waitingSince = nil }
                    defer { watch.withLockedValue { $0.waitingSince = .now } }
                    guard self.upstreams.contains(up) else { throw FollowEnd.delisted }
                    // Entries are applied from the frame's bytes as they are (`PackedEntries`).
                    if let list = try Response.packedEntries(frame) {
                        let newHead: Head
                        do {
                            newHead = try await core.store.appendEntries(list)
                        } catch let error as AppendError where error.isNewerFormat {
                            // Its chained hash held: the upstream wrote it, in a format newer
                            // than this build's. Every try meets it again.
                            self.metrics.damagedEntries.increment()
                            throw FollowEnd.damaged("\(error.damageDescription): the upstream writes log entries newer than this node reads; upgrade this node (replicas and mirrors before their roots and bridges: docs/protocol.md, \"Log entries\")")
                        } catch let error as AppendError {
                            // The subscription checked the hash this node and the upstream share
                            // at its head: an entry after it that does not continue that chain
                            // (or does not decode, or skips an index) was damaged on the way or
                            // by the upstream, not a history of its own. Nothing of the frame
                            // was applied; the next subscription asks again from the head.
                            self.metrics.damagedEntries.increment()
                            throw FollowEnd.damaged("\(error.damageDescription): damaged on the way or by the upstream (the subscription checked the history this node shares with it); nothing of it was applied, and it is asked for again")
                        }
                        core.watcher.publish()
                        core.metrics.logHead.record(Double(newHead.index))
                        self.metrics.head.record(Double(newHead.index))
                        self.metrics.entriesApplied.increment(by: list.count)
                        core.updateUpstream {
                            $0.subscribed = true
                            $0.leftBecause = nil
                            $0.head = newHead.index
                            // The upstream holds at least what it sent: heard now.
                            $0.upstreamHead = max($0.upstreamHead, newHead.index)
                            $0.upstreamHeardNs = wallClockNanoseconds()
                        }
                        continue
                    }
                    switch try Response.decode(frame) {
                    case let .heartbeat(upHead, rootTime):
                        let mine = try await core.store.head().index
                        // It sent entries up to this node's head at least (the subscription
                        // began at it): a head below is a lie or another log, never lag 0.
                        if upHead < mine {
                            throw FollowEnd.refused(.behind, "the upstream's heartbeat says its head is \(upHead), below this node's \(mine), which it streamed or subscribed from")
                        }
                        let now = wallClockNanoseconds()
                        let word = rootWord.heard(rootTime, now: now)
                        if rootTime > now + 1_000_000_000 {
                            self.skewed.log(self.logger, .warning, "the root time this upstream sends is ahead of this node's clock: taken as this node's time when it advances, never as it is (check both clocks)",
                                            peer: up.description, metadata: ["upstream": "\(up)", "ahead-seconds": "\((rootTime - now) / 1_000_000_000)"])
                        }
                        core.updateUpstream {
                            $0.subscribed = true
                            $0.upstreamHead = upHead
                            $0.upstreamHeardNs = now
                            $0.head = mine
                            if let word { $0.rootTimeNs = max($0.rootTimeNs, word) }
                        }
                        watch.withLockedValue {
                            $0.lastHeartbeat = .now
                            if let word { $0.wordFromNs = word }
                        }
                        self.refreshGauges()
                        // Staleness is judged on this upstream's own word, not the freshest ever seen.
                        let age = rootWord.age(now: now)
                        if age > self.staleAfter.seconds { throw FollowEnd.stale(age) }
                        core.updateUpstream { $0.leftBecause = nil }
                        if self.hasWorkBesidesFollowing() { throw FollowEnd.interrupted }
                    case let .error(code, message):
                        throw FollowEnd.refused(ErrorCode(rawValue: code), message)
                    default:
                        throw FollowEnd.refused(nil, "unexpected frame on a subscription")
                    }
                }
            } catch let own as FollowEnd {
                // The loop's own reason (a refusal, a repair first) comes before the watchdog's.
                throw own
            } catch {
                // Closed by the watchdog: its verdict, not what the cut frame says.
                if let verdict = watch.withLockedValue({ $0.verdict }) { throw verdict }
                throw error
            }
            if let verdict = watch.withLockedValue({ $0.verdict }) { throw verdict }
            throw FollowEnd.closed
        }
    }

    /// What a subscription's watchdog judges from, while the follower waits for a frame.
    /// Nothing is judged while bytes still arrive at a useful rate: a large frame on a slow
    /// link (a 2 MB entry at 200 KB/s) is not silence, and its heartbeat comes after it.
    struct SubscriptionWatch: Sendable {
        /// Since when the follower waits for the next frame (nil while it applies one).
        var waitingSince: ContinuousClock.Instant?
        var lastHeartbeat = ContinuousClock.now
        /// The root's last word through this subscription (or its start), ns since the epoch.
        var wordFromNs: UInt64
        /// Why the watchdog closed the subscription.
        var verdict: FollowEnd?
        /// Bytes received, as last noted, and since when bytes have come slower than
        /// `flowingBytesPerSecond` (nil while they flow).
        var received: UInt64 = 0
        var slowSince: ContinuousClock.Instant? = .now

        /// How long a waiting follower lets an upstream go without a heartbeat (it sends one
        /// every second when idle) once bytes no longer flow.
        static let heartbeatPatience: Duration = .seconds(5)
        /// The byte rate below which a frame is not taken as arriving (a trickle: a byte a
        /// second never completes a heartbeat).
        static let flowingBytesPerSecond: UInt64 = 1024

        init(wordFromNs: UInt64) { self.wordFromNs = wordFromNs }

        /// Notes the bytes received by now (called about once a second).
        mutating func note(received now: UInt64) {
            let flowing = now &- received >= Self.flowingBytesPerSecond
            received = now
            if flowing { slowSince = nil } else if slowSince == nil { slowSince = .now }
        }

        func judge(staleAfter: Duration, now: UInt64 = wallClockNanoseconds()) -> FollowEnd? {
            guard let since = waitingSince, let slow = slowSince else { return nil }
            let waited = ContinuousClock.now - max(since, lastHeartbeat, slow)
            if waited > Self.heartbeatPatience {
                return .silent(waited.seconds)
            }
            let age = now > wordFromNs ? Double(now - wordFromNs) / 1e9 : 0
            return age > staleAfter.seconds ? .stale(age) : nil
        }
    }

    /// The root's word through one subscription, never ahead of this node's clock. A root
    /// time at or before now is the time the root last spoke; one ahead of now (a clock
    /// ahead of this node's, or a hostile or broken upstream) says only that the root spoke
    /// since the last heartbeat when it has advanced, and is then taken as now: so a time
    /// in the future, frozen or not, never makes a dead root look fresh, here or in the
    /// heartbeats this node sends its own subscribers.
    struct RootWord {
        /// When the subscription began (this node's clock): the age's start until a word counts.
        let since: UInt64
        /// The highest root time this subscription sent, as sent.
        private(set) var sent: UInt64 = 0
        /// The root's last word as this node takes it (ns since the epoch), 0 when none yet.
        private(set) var word: UInt64 = 0

        init(since: UInt64) { self.since = since }

        /// Takes a heartbeat's root time; returns the word it gives, nil when it gives none.
        mutating func heard(_ rootTime: UInt64, now: UInt64) -> UInt64? {
            defer { sent = max(sent, rootTime) }
            let taken: UInt64
            if rootTime <= now {
                taken = rootTime
            } else if sent > 0 && rootTime > sent {
                taken = now
            } else {
                return nil
            }
            word = max(word, taken)
            return word
        }

        /// Seconds since the root's last word through this subscription (since it began when none yet).
        func age(now: UInt64) -> Double {
            let from = word > 0 ? word : since
            return now > from ? Double(now - from) / 1e9 : 0
        }
    }

    /// Refuses a snapshot of `size` bytes before any of it is written when there is not
    /// room for it and a margin (a tenth, at least 1 MiB) twice over: once staged (in
    /// `--staging-dir`), once installed in the data directory. The error is a disk-full
    /// one, so the loop waits instead of fetching the snapshot again every second.
    func checkRoom(for size: UInt64, held: UInt64) throws {
        try checkSnapshotRoom(core.store, for: size, held: held)
    }

    /// Whether the follower must stop following to repair the store or carry out an
    /// operator's rebootstrap.
    func hasWorkBesidesFollowing() -> Bool {
        let damaged = core.store.integrity.problem != nil
        return memory.withLockedValue { $0.rebootstrap != nil || (damaged && !$0.repairTried) }
    }

    /// The head to keep when the damaged store is repaired from `up`, nil when it was
    /// repaired once already (a damaged upstream is not fetched from again and again: the
    /// node stays unready and says so).
    private func repairOnce(from up: Endpoint) async throws -> Head? {
        let first = memory.withLockedValue { m in
            defer { m.repairTried = true }
            return !m.repairTried
        }
        guard first else { return nil }
        metrics.repairs.increment()
        logger.error("store damaged: repairing once from the upstream", metadata: [
            "upstream": "\(up)", "problem": "\(core.store.integrity.problem ?? "?")"])
        return try await core.store.head()
    }

    /// Asks the follower to replace the store with `from`'s snapshot, whatever its history
    /// (an operator's `qsctl rebootstrap`). Carried out within a second or so.
    public func requestRebootstrap(from up: Endpoint) {
        memory.withLockedValue { $0.rebootstrap = up }
        logger.notice("rebootstrap requested by an operator: this store will be replaced by the snapshot of \(up), whatever its history",
                      metadata: ["from": "\(up)"])
    }

    private func rebootstrap(from up: Endpoint) async throws {
        let before = try await core.store.head()
        do {
            try await bootstrap(from: up, continuing: nil, operatorAsked: true)
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            logger.error("rebootstrap failed: the store is unchanged", metadata: ["from": "\(up)", "error": "\(error)"])
            return
        }
        memory.withLockedValue { m in
            m.refused.removeAll()
            m.failed.removeAll()
            m.repairTried = false
        }
        core.store.integrity.clear()
        metrics.rebootstraps.increment()
        let after = try await core.store.head()
        logger.notice("rebootstrapped by an operator: this store's history was replaced", metadata: [
            "from": "\(up)", "was-index": "\(before.index)", "was-hash": "\(hexString(before.hash))",
            "now-index": "\(after.index)", "now-hash": "\(hexString(after.hash))"])
    }

    /// Pulls a snapshot from `up` into the store's scratch directory, which checks it
    /// (with `continuing`, that its history contains that head) and installs it in one
    /// transaction. A snapshot from `up` that failed is not fetched again before its
    /// backoff (30 s doubling to 10 min) has passed, unless an operator asked.
    func bootstrap(from up: Endpoint, continuing: Head?, operatorAsked: Bool = false) async throws {
        if !operatorAsked, let until = memory.withLockedValue({ $0.failed[up.description]?.until }), ContinuousClock.now < until {
            throw FollowEnd.backingOff("a snapshot from \(up) failed; the next try is in \(Int((until - ContinuousClock.now).seconds)) s")
        }
        do {
            try await fetchAndInstall(from: up, continuing: continuing)
            memory.withLockedValue { _ = $0.failed.removeValue(forKey: up.description) }
        } catch let error as StoreError {
            if case .snapshotDiverged = error { throw error }
            if error.refusesSnapshot { metrics.bootstrapsRefused.increment() }
            memory.withLockedValue { m in
                var backoff = m.failed[up.description]?.backoff ?? Backoff(initial: .seconds(30), cap: .seconds(600))
                m.failed[up.description] = (ContinuousClock.now + backoff.next(), backoff)
            }
            throw error
        }
    }

    /// Waits `delay` for room on the disk, reading the upstream's head every few seconds
    /// meanwhile: the lag (`qs_replica_lag_entries`, `qsctl status`) says how far the
    /// upstream moved on while nothing could be applied, not the figure heard when it
    /// stopped. The root's word is not renewed by it (the root's age keeps growing).
    private func waitForRoom(_ delay: Duration, watching up: Endpoint) async throws {
        let until = ContinuousClock.now + delay
        repeat {
            if let theirs = try? await upstreamHead(up) {
                let mine = try? await core.store.head().index
                core.updateUpstream {
                    $0.upstreamHead = theirs.index
                    $0.upstreamHeardNs = wallClockNanoseconds()
                    if let mine { $0.head = mine }
                }
                refreshGauges()
            }
            try await Task.sleep(for: min(.seconds(5), until - .now))
        } while ContinuousClock.now < until
    }

    /// The upstream's head, asked on a connection of its own (presenting the replication
    /// token: an upstream on another machine answers reads only then).
    private func upstreamHead(_ up: Endpoint) async throws -> Head {
        let client = try await QSClient.connect(to: up, readToken: upstreamToken, requestTimeout: .seconds(5))
        defer { Task { await client.close() } }
        if let remote = client.remoteAddress, let itself = await itself(up, remote: remote) { throw itselfError(up, itself) }
        return try await client.head()
    }

    private func fetchAndInstall(from up: Endpoint, continuing: Head?) async throws {
        logger.info("bootstrap: requesting a snapshot", metadata: ["upstream": "\(up)"])
        var announcedBytes: UInt64 = 0, resumedFrom: UInt64 = 0
        let started = ContinuousClock.now
        var transferred = started
        let head = try await core.store.installSnapshot(continuing: continuing) { file in
            let begin = try await receiveSnapshot(from: up, token: self.upstreamToken, group: self.group, into: file,
                                                  checkRoom: { try self.checkRoom(for: $0, held: $1) }, logger: self.logger,
                                                  tally: SnapshotTally(self.metrics.bootstrapBytes))
            announcedBytes = begin.size
            resumedFrom = begin.resumedFrom
            transferred = ContinuousClock.now
            return Head(index: begin.index, hash: begin.hash, commitTimeNs: 0)
        }
        core.watcher.publish()
        metrics.bootstraps.increment()
        if resumedFrom > 0 { metrics.bootstrapsResumed.increment() }
        metrics.head.record(Double(head.index))
        logger.notice("bootstrap installed", metadata: ["upstream": "\(up)", "index": "\(head.index)", "bytes": "\(announcedBytes)",
                                                       "resumed-at-bytes": "\(resumedFrom)",
                                                       "transfer-milliseconds": "\(Int((transferred - started).seconds * 1000))",
                                                       "check-milliseconds": "\(Int((ContinuousClock.now - transferred).seconds * 1000))"])
    }
}
