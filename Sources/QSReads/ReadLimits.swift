import QSModel
import QSStore
import Synchronization

/// The read servers' clock: epoch seconds, against which expiry is judged.
public typealias ReadClock = @Sendable () -> UInt64

/// Limits on what one scan-based request (match_prefix, match_regex, status) may visit or
/// return, so a request cannot grow the node's memory without bound.
public struct ScanLimits: Sendable {
    /// Most keys one match_prefix/match_regex reply lists (KT's `max`, when given, is
    /// capped by this too).
    public var maxResults: Int
    /// Records fetched per store read.
    public var pageSize: Int

    public init(maxResults: Int = 100_000, pageSize: Int = 1000) {
        self.maxResults = maxResults
        self.pageSize = pageSize
    }
}

/// A scan whose client has gone (its connection closed): stopped between pages, its reply
/// never built. Scans of the whole store carried on for their full length after their
/// connection closed, holding a scan slot, and delayed a graceful stop.
struct KTRequestAbandoned: Error {}

extension StoreTransaction {
    /// Visits every record under `prefix` page by page (bounded memory) until `visit`
    /// returns false. Expired records are skipped when `now` is given. Before each page,
    /// `abandoned` says whether the client is gone (throws `KTRequestAbandoned`).
    func forEachRecord(prefix: [UInt8], now: UInt64?, pageSize: Int, abandoned: () -> Bool = { false },
                       _ visit: ([UInt8], Record) throws -> Bool) throws {
        var after: [UInt8]?
        while true {
            if abandoned() { throw KTRequestAbandoned() }
            let page = try scan(prefix: prefix, after: after, limit: pageSize, maxBytes: 4 << 20, now: now)
            for r in page.records where try !visit(r.key, r.record) { return }
            guard let next = page.next else { return }
            after = next
        }
    }
}

/// How many scan requests (match_prefix, match_regex, status, report) run on the store's
/// reader threads at once; the others wait here, off those threads. However many clients
/// scan, the rest of the reader threads stay free for the node's own reads (a replica's
/// upstream handling, a root's checkpoint and status reads): before, sixteen slow
/// `match_regex` requests on a root's KT port held all four and stopped its writes.
actor ScanGate {
    let limit: Int
    private var running = 0
    private var waiting: [CheckedContinuation<Void, Never>] = []
    /// `waiting.count`, for `isContended` from any thread.
    private nonisolated let waiters = Atomic<Int>(0)

    init(limit: Int) {
        self.limit = max(1, limit)
    }

    /// Whether scans wait for a slot now (read without waiting for the gate).
    nonisolated var isContended: Bool { waiters.load(ordering: .relaxed) > 0 }

    func run<T: Sendable>(_ body: @Sendable () async throws -> T) async rethrows -> T {
        while running >= limit {
            waiters.add(1, ordering: .relaxed)
            await withCheckedContinuation { waiting.append($0) }
            waiters.subtract(1, ordering: .relaxed)
        }
        running += 1
        defer {
            running -= 1
            if !waiting.isEmpty { waiting.removeFirst().resume() }
        }
        return try await body()
    }
}
