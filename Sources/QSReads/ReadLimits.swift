import QSModel
import QSStore

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

extension StoreTransaction {
    /// Visits every record under `prefix` page by page (bounded memory) until `visit`
    /// returns false. Expired records are skipped when `now` is given.
    func forEachRecord(prefix: [UInt8], now: UInt64?, pageSize: Int,
                       _ visit: ([UInt8], Record) throws -> Bool) throws {
        var after: [UInt8]?
        while true {
            let page = try scan(prefix: prefix, after: after, limit: pageSize, maxBytes: 4 << 20, now: now)
            for r in page.records where try !visit(r.key, r.record) { return }
            guard let next = page.next else { return }
            after = next
        }
    }
}
