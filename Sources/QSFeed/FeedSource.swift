import QSModel

/// One change read from a source at its position. A change with no operations is a
/// position without a change (a KT update skipped for its sid, an unmapped database in
/// `count` mode): applying it only moves the checkpoint.
///
/// A change of one operation (every KT update) holds it inline: no one-element array is
/// made, copied and freed for each change a KT bridge carries.
public struct FeedChange: Sendable, Equatable {
    /// The source position (a KT timestamp, a QS log index). Strictly increasing.
    public var position: UInt64
    /// The operations: `ops` read as an array (one made on each read of a change of one).
    public var operations: [Mutation] {
        get {
            switch ops {
            case let .one(op): return [op]
            case let .list(list): return list
            }
        }
        set {
            ops = .list(newValue)
            operationCount = newValue.count
            operationBytes = Self.bytes(of: newValue)
        }
    }
    /// Internal: the batcher gathers a batch's operations from it in place.
    var ops: Operations
    /// Wall time the position stands for, in nanoseconds since the epoch (for lag).
    public var sourceTimeNs: UInt64?
    /// The source's log entry itself, when the source is a QS log (compatible mode
    /// appends it verbatim).
    public var entry: StoredEntry?
    /// How many operations the change holds: `operations.count`, or the entry's count when
    /// a QS log entry is forwarded verbatim without its operations decoded (compatible mode).
    public private(set) var operationCount: Int
    /// Key and value bytes of those operations (counted once, not at every look).
    public private(set) var operationBytes: Int

    enum Operations: Sendable {
        case one(Mutation)
        case list([Mutation])

        /// Appends the operations to `list` (a batch's), with no array made for one.
        func append(to list: inout [Mutation]) {
            switch self {
            case let .one(op): list.append(op)
            case let .list(ops): list.append(contentsOf: ops)
            }
        }
    }

    /// `operationCount` and `operationBytes` describe an entry whose operations are not
    /// decoded (`operations` empty); by default they are counted from `operations`.
    public init(position: UInt64, operations: [Mutation], sourceTimeNs: UInt64? = nil, entry: StoredEntry? = nil,
                operationCount: Int? = nil, operationBytes: Int? = nil) {
        self.position = position
        self.ops = .list(operations)
        self.sourceTimeNs = sourceTimeNs
        self.entry = entry
        self.operationCount = operationCount ?? operations.count
        self.operationBytes = operationBytes ?? Self.bytes(of: operations)
    }

    /// A change of one operation, held inline.
    public init(position: UInt64, operation: Mutation, sourceTimeNs: UInt64? = nil) {
        let bytes = operation.payloadBytes
        self.position = position
        self.ops = .one(operation)
        self.sourceTimeNs = sourceTimeNs
        self.entry = nil
        self.operationCount = 1
        self.operationBytes = bytes
    }

    /// What the change weighs in a batch: the entry's bytes when it is appended verbatim,
    /// else its operations' key and value bytes.
    public var payloadBytes: Int { entry?.bytes.count ?? operationBytes }

    static func bytes(of operations: [Mutation]) -> Int {
        var n = 0
        for op in operations { n += op.payloadBytes }
        return n
    }

    /// Equal when they stand for the same change, however the operations are held.
    public static func == (a: FeedChange, b: FeedChange) -> Bool {
        a.position == b.position && a.sourceTimeNs == b.sourceTimeNs && a.entry == b.entry
            && a.operationCount == b.operationCount && a.operationBytes == b.operationBytes && a.operations == b.operations
    }
}

/// How a bridge writes into its root.
public enum WriteMode: String, Sendable, CaseIterable {
    /// Changes batched and applied with compare-and-swap on the source position (the
    /// root's checkpoint for the source id).
    case batched
    /// Each source log entry appended verbatim at the same index with the same chained
    /// hash; the position is the target's head.
    case compatible
}

/// What a source delivers, in order.
public enum FeedEvent: Sendable, Equatable {
    case change(FeedChange)
    /// Several changes in order, delivered at once (the entries of one QS log frame): the
    /// same as each delivered alone, without a hop to the consumer for each.
    case changes([FeedChange])
    /// The source is alive and its clock (ns since the epoch) has reached this time. With
    /// `position`, the source also vouches that it has sent every change at or before that
    /// position (KT: the heartbeat's timestamp, its clock minus 1 s, never below the last
    /// timestamp sent), so the checkpoint may move there without a change.
    case heartbeat(sourceTimeNs: UInt64, position: UInt64? = nil)
}

/// A source of changes: KT live replication, a ulog directory, a recorded capture, a QS
/// node's log. A new source is one new conforming type.
public protocol FeedSource: Sendable {
    /// A short description for logs, e.g. `kt://10.0.0.1:1978`.
    var name: String { get }

    /// Reads the source from just after `position`, calling `deliver` for each event in
    /// order and awaiting it: while `deliver` is suspended the source must not read ahead,
    /// so a slow root stops the reading and memory stays bounded. Returns at the end of a
    /// finite source. Throws `FeedError.stop` for what must stop the bridge, any other
    /// error for what a reconnect and a resume from the checkpoint can cure.
    func run(after position: UInt64, deliver: @escaping @Sendable (FeedEvent) async throws -> Void) async throws

    /// How often the source says something when it has nothing new (a KT server's and a
    /// QS node's heartbeats: every second); nil for a source silent when idle (a ulog
    /// directory, a capture). A source silent for several of these hangs or is cut off.
    var heartbeatInterval: Duration? { get }
    /// How long the source may stay silent before its connection is given up and made
    /// again (nil: never).
    var silenceTimeout: Duration? { get }
}

extension FeedSource {
    public var heartbeatInterval: Duration? { nil }
    public var silenceTimeout: Duration? { nil }
}

/// Errors a source or the consumer raise on purpose.
public enum FeedError: Error, Sendable, CustomStringConvertible, Equatable {
    /// Stop the bridge: continuing would lose or corrupt data (an unmapped database in
    /// `stop` mode, a KT clear without `--allow-clear`, an undecodable record in `stop`
    /// mode, a root whose checkpoint went backwards).
    case stop(String)
    /// The source's data is damaged at this point (a corrupt frame): never applied;
    /// the consumer reconnects and resumes from its checkpoint.
    case corrupt(String)

    public var description: String {
        switch self {
        case let .stop(why): return why
        case let .corrupt(why): return "corrupt source data: \(why)"
        }
    }
}

/// Work a consumer does at the root before it reads its source from the checkpoint (a KT
/// bridge's initial copy): run at the start and again before each resume after a failure.
/// Errors are handled like the source's: `FeedError.stop` stops the bridge, anything else
/// is retried with backoff.
public protocol FeedPreparation: Sendable {
    func prepare(root: RootWriter, sourceID: String) async throws
    /// What it is doing now, for `/readyz` (nil: nothing).
    var activity: String? { get }
}

/// Changes a source has read and not yet delivered, handed to the consumer as one
/// `FeedEvent.changes` (one hop to the batcher for many changes, not one each). A source
/// appends what it reads and delivers the run when `append` says it is full, before any
/// other event (a heartbeat keeps its place after the changes read before it), before it
/// waits for more input, and before it throws (every change read before a failure is
/// delivered, as when each went alone). The bound keeps the back-pressure contract: while
/// a run is delivered the source reads nothing, and it holds at most `maxChanges` changes
/// or about `maxBytes` of payload more than before.
public struct ChangeRun: Sendable {
    /// The default bounds: enough changes that the hop costs next to nothing per change,
    /// few enough bytes that the memory held does not matter.
    public static let defaultMaxChanges = 1024
    public static let defaultMaxBytes = 1 << 20

    public let maxChanges: Int
    public let maxBytes: Int
    private var changes: [FeedChange] = []
    private var bytes = 0

    public init(maxChanges: Int = ChangeRun.defaultMaxChanges, maxBytes: Int = ChangeRun.defaultMaxBytes) {
        self.maxChanges = max(1, maxChanges)
        self.maxBytes = max(1, maxBytes)
    }

    public var isEmpty: Bool { changes.isEmpty }

    /// Adds a change; true when the run is full and should be delivered now.
    public mutating func append(_ change: consuming FeedChange) -> Bool {
        if changes.isEmpty { changes.reserveCapacity(maxChanges) }
        bytes += change.payloadBytes
        changes.append(change)
        return changes.count >= maxChanges || bytes >= maxBytes
    }

    /// Runs `body` with an empty run to append to, then delivers what it holds: at the
    /// end, and when `body` throws (except on cancellation), before the error goes on.
    public static func reading(maxChanges: Int = ChangeRun.defaultMaxChanges, maxBytes: Int = ChangeRun.defaultMaxBytes,
                               _ deliver: @Sendable (FeedEvent) async throws -> Void,
                               _ body: (inout ChangeRun) async throws -> Void) async throws {
        var run = ChangeRun(maxChanges: maxChanges, maxBytes: maxBytes)
        do {
            try await body(&run)
        } catch {
            if !(error is CancellationError) { try await run.deliver(deliver) }
            throw error
        }
        try await run.deliver(deliver)
    }

    /// Delivers what is held (nothing when empty) and empties the run.
    public mutating func deliver(_ deliver: @Sendable (FeedEvent) async throws -> Void) async throws {
        guard !changes.isEmpty else { return }
        let run = changes
        changes = []
        bytes = 0
        try await deliver(run.count == 1 ? .change(run[0]) : .changes(run))
    }
}
