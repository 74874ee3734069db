import Logging
import NIOConcurrencyHelpers
import NIOCore
import QSClient
import QSFeed
import QSModel
import QSNet
import QSWire

/// A root in memory, behind `RootWriter`'s connection seam: checkpoints per source id and a
/// key-value state with compare-and-swap batches like a node's, every batch it was sent
/// with its answer, and switches the test flips: refuse connections (down), hold batches
/// until released (slow), lose the answer of an applied batch, answer the next request with
/// an error.
final class ScriptedRoot: Sendable {
    struct SentBatch: Equatable, Sendable {
        var expected: UInt64
        var new: UInt64
        var operations: [Mutation]
        var answer: Response
    }

    struct State: Sendable {
        var checkpoints: [String: UInt64] = [:]
        var values: [[UInt8]: [UInt8]] = [:]
        /// How many times each key was written by a batch.
        var writes: [[UInt8]: Int] = [:]
        var batches: [SentBatch] = []
        var appends: [[StoredEntry]] = []
        var headIndex: UInt64 = 0
        var checkpointReads = 0
        var connectAttempts = 0
        var failedCalls = 0
        var down = false
        /// Connections made before this generation are dead (a restart or a dropped link).
        var generation = 0
        var holdBatches = false
        var heldBatches = 0
        /// Batches sent (pipelined calls included), whether answered yet or not.
        var startedBatches = 0
        var releases: [CheckedContinuation<Void, Never>] = []
        var loseNextAnswer = false
        /// What hello is answered (default: the head).
        var helloAnswer: Response?
        /// What status is answered (default: unsupported, as a node older than it).
        var statusJSON: String?
        var nextAnswer: Response?
        /// How many calls in a row get `nextAnswer` (each answers it once by default).
        var nextAnswerTimes = 1
    }

    let state = NIOLockedValueBox(State())

    var snapshot: State { state.withLockedValue { $0 } }

    /// The root writer's connection factory.
    func connect() throws -> any RootConnection {
        try state.withLockedValue { s in
            s.connectAttempts += 1
            if s.down {
                s.failedCalls += 1
                throw ClientError.connectionFailed("connection refused (scripted root is down)")
            }
            return ScriptedConnection(root: self, generation: s.generation, order: CallOrder())
        }
    }

    func writer(metrics: FeedMetrics = FeedMetrics()) -> RootWriter {
        RootWriter(endpoints: [.unix(path: "scripted-root")], token: [7], logger: quietLogger, metrics: metrics.root) { [self] _ in
            try connect()
        }
    }

    /// Takes the root down: open connections fail, new ones are refused.
    func goDown() {
        state.withLockedValue {
            $0.down = true
            $0.generation += 1
        }
    }

    func comeUp() { state.withLockedValue { $0.down = false } }

    func holdBatches() { state.withLockedValue { $0.holdBatches = true } }

    /// Lets held batches through and stops holding.
    func releaseBatches() {
        let waiting = state.withLockedValue { s in
            s.holdBatches = false
            defer { s.releases = [] }
            return s.releases
        }
        for w in waiting { w.resume() }
    }

    /// Another writer applies `sourceID` through `position` (keys `k<n>` set to `other`).
    func applyElsewhere(sourceID: String, from: UInt64, through position: UInt64) {
        state.withLockedValue { s in
            for n in from...position { s.values[key(n)] = Array("other".utf8) }
            s.checkpoints[sourceID] = position
        }
    }

    func setCheckpoint(_ sourceID: String, _ position: UInt64) {
        state.withLockedValue { $0.checkpoints[sourceID] = position }
    }

    func answer(_ request: Request, generation: Int) async throws -> Response {
        if case .batch = request {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let held = state.withLockedValue { s in
                    guard s.holdBatches else { return false }
                    s.heldBatches += 1
                    s.releases.append(c)
                    return true
                }
                if !held { c.resume() }
            }
        }
        return try state.withLockedValue { s in
            guard !s.down, generation == s.generation else {
                s.failedCalls += 1
                throw ClientError.connectionClosed
            }
            if case .hello = request {
                // Every connection starts with hello; scripted answers are for the calls after it.
                if let answer = s.helloAnswer { return answer }
                return .head(Head(index: s.headIndex, hash: [UInt8](repeating: 0, count: 32), commitTimeNs: 0))
            }
            if let scripted = s.nextAnswer {
                s.nextAnswerTimes -= 1
                if s.nextAnswerTimes <= 0 {
                    s.nextAnswer = nil
                    s.nextAnswerTimes = 1
                }
                if case let .batch(b) = request {
                    s.batches.append(SentBatch(expected: b.expected, new: b.new, operations: b.operations, answer: scripted))
                }
                return scripted
            }
            switch request {
            case let .getCheckpoint(sid):
                s.checkpointReads += 1
                return .checkpoint(s.checkpoints[sid])
            case .head:
                return .head(Head(index: s.headIndex, hash: [UInt8](repeating: 0, count: 32), commitTimeNs: 0))
            case .status where s.statusJSON != nil:
                return .status(s.statusJSON!)
            case let .batch(b):
                let current = s.checkpoints[b.sourceID] ?? 0
                guard current == b.expected else {
                    let answer = Response.conflict(current: current)
                    s.batches.append(SentBatch(expected: b.expected, new: b.new, operations: b.operations, answer: answer))
                    return answer
                }
                for op in b.operations {
                    switch op {
                    case let .set(key, value, _):
                        s.values[key] = value
                        s.writes[key, default: 0] += 1
                    case let .delete(key):
                        s.values[key] = nil
                        s.writes[key, default: 0] += 1
                    case let .clearPrefix(p):
                        s.values = s.values.filter { !$0.key.starts(with: p) }
                    }
                }
                s.checkpoints[b.sourceID] = b.new
                s.headIndex += 1
                let answer = Response.applied(logIndex: s.headIndex, kept: UInt32(b.operations.count), dropped: 0)
                s.batches.append(SentBatch(expected: b.expected, new: b.new, operations: b.operations, answer: answer))
                if s.loseNextAnswer {
                    // Applied, but the link drops before the answer arrives.
                    s.loseNextAnswer = false
                    s.generation += 1
                    throw ClientError.connectionClosed
                }
                return answer
            case let .append(_, entries, _):
                s.appends.append(entries.entries)
                s.headIndex += UInt64(entries.count)
                return .applied(logIndex: s.headIndex, kept: UInt32(entries.count), dropped: 0)
            default:
                return .error(code: ErrorCode.unsupported.rawValue, message: "the scripted root does not answer \(request.name)")
            }
        }
    }
}

/// The calls of one scripted connection, answered one after another in the order they
/// were sent, as a node answers a pipelining client.
final class CallOrder: Sendable {
    let last = NIOLockedValueBox<Task<Void, Never>?>(nil)
}

/// A connection to a `ScriptedRoot`; the typed calls throw on error answers like `QSClient`'s.
struct ScriptedConnection: RootConnection {
    let root: ScriptedRoot
    let generation: Int
    let order: CallOrder

    func send(_ request: Request, timeout: TimeAmount) async throws -> Response {
        try await start(request, timeout: timeout).wait()
    }

    func start(_ request: Request, timeout: TimeAmount) -> PendingAnswer {
        if case .batch = request { root.state.withLockedValue { $0.startedBatches += 1 } }
        let root = self.root, generation = self.generation
        let answer = order.last.withLockedValue { last -> Task<Response, any Error> in
            let before = last
            let answer = Task {
                await before?.value
                return try await root.answer(request, generation: generation)
            }
            last = Task { _ = try? await answer.value }
            return answer
        }
        return PendingAnswer { try await answer.value }
    }

    func checkpoint(sourceID: String) async throws -> UInt64? {
        let r = try await send(.getCheckpoint(sourceID: sourceID), timeout: .seconds(60))
        guard case let .checkpoint(cp) = r else { throw Self.failure(r) }
        return cp
    }

    func batch(sourceID: String, expected: UInt64, new: UInt64, operations: [Mutation]) async throws -> Response {
        let r = try await send(.batch(.init(token: [7], sourceID: sourceID, expected: expected, new: new, operations: operations)),
                               timeout: .seconds(60))
        switch r {
        case .applied, .conflict: return r
        default: throw Self.failure(r)
        }
    }

    func head() async throws -> Head {
        let r = try await send(.head, timeout: .seconds(60))
        guard case let .head(h) = r else { throw Self.failure(r) }
        return h
    }

    func close() async {}

    static func failure(_ r: Response) -> ClientError {
        if case let .error(code, message) = r { return .server(code: code, message: message) }
        return .unexpected("\(r)")
    }
}

/// A source the test feeds: queued events are delivered in order, each awaited as the
/// protocol asks; `finish` ends a run, `fail` makes it throw. It records where each run
/// started, every position delivered, and whether a delivery is in progress.
final class ScriptedSource: FeedSource {
    enum Item: Sendable {
        case event(FeedEvent)
        case finish
        case fail(any Error)
    }

    struct State: Sendable {
        var queue: [Item] = []
        var waiter: CheckedContinuation<Void, Never>?
        var runs: [UInt64] = []
        var delivered: [UInt64] = []
        var delivering: UInt64?
        /// Events whose delivery has returned (changes and heartbeats).
        var handled = 0
    }

    let name = "scripted"
    let state = NIOLockedValueBox(State())
    /// Called before each delivery (to observe the root at that moment).
    let probe: (@Sendable (FeedChange) -> Void)?

    init(probe: (@Sendable (FeedChange) -> Void)? = nil) {
        self.probe = probe
    }

    var snapshot: State { state.withLockedValue { $0 } }

    func send(_ items: [Item]) {
        let waiter = state.withLockedValue { s in
            s.queue += items
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume()
    }

    func send(_ changes: [FeedChange]) { send(changes.map { .event(.change($0)) }) }

    func finish() { send([Item.finish]) }

    func run(after position: UInt64, deliver: @escaping @Sendable (FeedEvent) async throws -> Void) async throws {
        state.withLockedValue { $0.runs.append(position) }
        while true {
            switch try await next() {
            case let .event(event):
                var at: UInt64?
                if case let .change(c) = event {
                    probe?(c)
                    at = c.position
                }
                state.withLockedValue { $0.delivering = at }
                try await deliver(event)
                state.withLockedValue { s in
                    s.delivering = nil
                    s.handled += 1
                    if let at { s.delivered.append(at) }
                }
            case .finish:
                return
            case let .fail(error):
                throw error
            }
        }
    }

    private func next() async throws -> Item {
        while true {
            try Task.checkCancellation()
            if let item = state.withLockedValue({ $0.queue.isEmpty ? nil : $0.queue.removeFirst() }) { return item }
            await withTaskCancellationHandler {
                await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                    let now = state.withLockedValue { s in
                        if !s.queue.isEmpty || Task.isCancelled { return true }
                        s.waiter = c
                        return false
                    }
                    if now { c.resume() }
                }
            } onCancel: {
                let waiter = state.withLockedValue { s in
                    defer { s.waiter = nil }
                    return s.waiter
                }
                waiter?.resume()
            }
        }
    }
}

let quietLogger = Logger(label: "feed-test") { _ in SwiftLogNoOpLogHandler() }

func key(_ n: UInt64) -> [UInt8] { Array("k\(n)".utf8) }

/// Change `n`: sets `k<n>` to `value` (default `bridge`).
func change(_ n: UInt64, value: [UInt8] = Array("bridge".utf8)) -> FeedChange {
    FeedChange(position: n, operations: [.set(key: key(n), value: value, expiry: nil)])
}
