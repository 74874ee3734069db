import Foundation
import QSClient
import QSModel

/// What each producer of an ACL stores on a node, by scanning the node's live records.
///
/// Bytes stored count, per record: its key, its value, and the store's own per-record
/// overhead (`recordOverhead`): the stored key's tag byte, the record's flags byte, 8
/// bytes of expiry when it has one, for a key longer than the store's inline limit (477
/// bytes with LMDB's 511-byte key limit) the longer stored key and the full key kept in
/// the record, and LMDB's 8-byte node header plus its 2-byte slot in the page. Page
/// fill, branch pages, the log and free pages are not counted (they belong to no one
/// key); expired records not yet purged are not seen by the scan.
public struct UsageReport: Sendable, Equatable {
    public struct Tally: Sendable, Equatable {
        public var keys = 0
        public var keyBytes = 0
        public var valueBytes = 0
        public var overheadBytes = 0
        public var totalBytes: Int { keyBytes + valueBytes + overheadBytes }

        public init() {}

        mutating func add(key: [UInt8], record: Record) {
            keys += 1
            keyBytes += key.count
            valueBytes += record.value.count
            overheadBytes += UsageReport.recordOverhead(keyCount: key.count, hasExpiry: record.expiry != nil)
        }
    }

    /// Per producer name (every producer of the ACL, zero when it stores nothing).
    public var producers: [String: Tally]
    /// Keys that match no producer's prefixes.
    public var unowned = Tally()
    /// The first of those keys (at most `sampleLimit`), to say where they are.
    public var unownedSample: [[UInt8]] = []
    public static let sampleLimit = 20

    /// The store's bytes for one record beyond its key and value (see the type's comment).
    public static func recordOverhead(keyCount: Int, hasExpiry: Bool) -> Int {
        let inlineLimit = 477, storedLongKey = 511
        var n = 1 + 1 + (hasExpiry ? 8 : 0) + 10
        if keyCount > inlineLimit { n += storedLongKey - (keyCount + 1) + 4 + keyCount }
        return n
    }

    public init(acl: ACL) {
        producers = Dictionary(uniqueKeysWithValues: acl.producers.map { ($0.name, Tally()) })
    }

    /// Scans every live record of the node `client` talks to (expiry judged at one
    /// instant, so a long scan is consistent about it), `pageSize` records a request.
    public static func measure(_ client: QSClient, acl: ACL, pageSize: UInt32 = 1000,
                               asOf: UInt64 = wallClockSeconds()) async throws -> UsageReport {
        var report = UsageReport(acl: acl)
        var cursor = [UInt8]()
        while true {
            let page = try await client.scan(prefix: [], cursor: cursor, limit: pageSize, asOf: asOf)
            for r in page.records { report.add(key: r.key, record: r.record, acl: acl) }
            guard let next = page.next else { break }
            cursor = next
        }
        return report
    }

    /// Counts one record under every producer whose keyspace holds it (several only for
    /// shared prefixes), or as unowned.
    public mutating func add(key: [UInt8], record: Record, acl: ACL) {
        let owners = acl.owners(of: key)
        if owners.isEmpty {
            unowned.add(key: key, record: record)
            if unownedSample.count < Self.sampleLimit { unownedSample.append(key) }
        }
        for o in owners { producers[o.name, default: Tally()].add(key: key, record: record) }
    }

    /// One JSON object: `{"producers": {NAME: {keys, key_bytes, value_bytes, overhead_bytes,
    /// total_bytes}}, "unowned": {…, "sample": [base64…]}}`.
    public var json: String {
        func tally(_ t: Tally) -> String {
            "\"keys\":\(t.keys),\"key_bytes\":\(t.keyBytes),\"value_bytes\":\(t.valueBytes),\"overhead_bytes\":\(t.overheadBytes),\"total_bytes\":\(t.totalBytes)"
        }
        let ps = producers.keys.sorted().map { "\"\($0)\":{\(tally(producers[$0] ?? Tally()))}" }.joined(separator: ",")
        let sample = unownedSample.map { "\"\(Data($0).base64EncodedString())\"" }.joined(separator: ",")
        return "{\"producers\":{\(ps)},\"unowned\":{\(tally(unowned)),\"sample\":[\(sample)]}}"
    }

    /// A table, a line per producer then the unowned keys.
    public var table: String {
        var lines = ["producer\tkeys\tkey_bytes\tvalue_bytes\toverhead_bytes\ttotal_bytes"]
        func line(_ name: String, _ t: Tally) -> String { "\(name)\t\(t.keys)\t\(t.keyBytes)\t\(t.valueBytes)\t\(t.overheadBytes)\t\(t.totalBytes)" }
        for name in producers.keys.sorted() { lines.append(line(name, producers[name] ?? Tally())) }
        lines.append(line("(no producer)", unowned))
        return lines.joined(separator: "\n")
    }
}
