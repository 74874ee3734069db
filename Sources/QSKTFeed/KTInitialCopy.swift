import Foundation
import KTFormats
import Logging
import Metrics
import NIOConcurrencyHelpers
import QSBytes
import QSFeed
import QSModel
import QSWire

/// `--initial-copy`: whether a KT bridge copies KT's records before following its feed.
public enum InitialCopyMode: String, Sendable, CaseIterable {
    /// Copy when the root has no checkpoint for the source id (or holds an unfinished copy).
    case auto
    /// Copy at this start even when the root has a checkpoint (to repair a root).
    case always
    /// Never copy: replay the update log from the checkpoint (from 0 on a first start).
    case never
}

/// `--copy-rate`: the most records and bytes per second the copy reads (nil: no limit).
public struct CopyRate: Sendable, Equatable, CustomStringConvertible {
    public var recordsPerSecond: Double?
    public var bytesPerSecond: Double?

    public init(recordsPerSecond: Double? = nil, bytesPerSecond: Double? = nil) {
        self.recordsPerSecond = recordsPerSecond
        self.bytesPerSecond = bytesPerSecond
    }

    public var description: String {
        let parts = [recordsPerSecond.map { "\(Int($0))/s" }, bytesPerSecond.map { "\(Int($0))B/s" }].compactMap { $0 }
        return parts.isEmpty ? "none" : parts.joined(separator: ",")
    }

    /// How long after the start `records` records and `bytes` bytes may have been read.
    func due(records: Int, bytes: Int) -> Duration {
        let seconds = max(recordsPerSecond.map { Double(records) / $0 } ?? 0, bytesPerSecond.map { Double(bytes) / $0 } ?? 0)
        return .nanoseconds(Int64(seconds * 1e9))
    }
}

/// Where an initial copy stands, stored at the root beside the checkpoint
/// (`Request.Batch.copyCursor`): the KT position T0 the feed resumes from once the copy is
/// done, the database being copied, the last key copied in it, and the totals so far.
/// Bytes: `1:u8 t0:u64 db:u16 hasKey:u8 key:blob32 records:u64 bytes:u64`.
public struct CopyCursor: Sendable, Equatable {
    public var t0: UInt64
    public var db: UInt16
    public var lastKey: [UInt8]?
    public var records: UInt64
    public var bytes: UInt64

    public init(t0: UInt64, db: UInt16, lastKey: [UInt8]? = nil, records: UInt64 = 0, bytes: UInt64 = 0) {
        self.t0 = t0
        self.db = db
        self.lastKey = lastKey
        self.records = records
        self.bytes = bytes
    }

    public var encoded: [UInt8] {
        var w = ByteWriter()
        w.writeU8(1)
        w.writeU64(t0)
        w.writeU16(db)
        w.writeU8(lastKey == nil ? 0 : 1)
        w.writeBlob32(lastKey ?? [])
        w.writeU64(records)
        w.writeU64(bytes)
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws {
        var r = ByteReader(bytes)
        let version = try r.readU8("copy cursor version")
        guard version == 1 else { throw DecodeError(offset: 0, reason: "copy cursor version \(version) (this bridge reads version 1)") }
        t0 = try r.readU64("T0")
        db = try r.readU16("database")
        let hasKey = try r.readU8("key presence") == 1
        let key = try r.readBlob32("last key")
        lastKey = hasKey ? key : nil
        records = try r.readU64("records")
        self.bytes = try r.readU64("bytes")
        try r.expectEnd("copy cursor")
    }
}

/// The copy's metrics (`qs_bridge_copy_*`).
public struct CopyMetrics: Sendable {
    public let active = Gauge(label: "qs_bridge_copy_active")
    public let records = Gauge(label: "qs_bridge_copy_records")
    public let bytes = Gauge(label: "qs_bridge_copy_bytes")
    public let expected = Gauge(label: "qs_bridge_copy_records_expected")
    public let rate = Gauge(label: "qs_bridge_copy_records_per_second")
    public let eta = Gauge(label: "qs_bridge_copy_eta_seconds")
    public let batches = Counter(label: "qs_bridge_copy_batches_total")

    public init() {}
}

/// The initial copy of a KT server into the root, stitched to the feed at T0.
///
/// Before reading anything it notes T0, KT's clock minus one second (`report`'s
/// `serv_current_time`: what ktserver's own replication heartbeat vouches for), then walks
/// every mapped database with a cursor over KT's HTTP RPC (`cur_jump`, pages of pipelined
/// `cur_get step=true`) and writes the records in compare-and-swap batches whose positions
/// count the batches (checkpoint+1, +2, …) and which carry the copy's cursor. The last batch
/// moves the checkpoint to T0 and removes the cursor; the feed then replays every update
/// after T0 over the copied records, which converges on KT's state (removes and expirations
/// during the copy included). A restarted bridge reads the cursor and resumes after the
/// last key copied; a duplicate bridge's batches conflict and it resumes from the root's
/// cursor.
public final class KTInitialCopy: FeedPreparation {
    public let client: KTRPCClient
    public let mapping: KTMapping
    public let mode: InitialCopyMode
    public let pageSize: Int
    public let rate: CopyRate
    /// Records per batch and bytes per batch (the bridge's --batch-max-ops/--batch-max-bytes);
    /// a single record above `maxBatchBytes` is refused.
    public let maxBatchOps: Int
    public let maxBatchBytes: Int
    /// Checks that KT's replication feed answers (an update log is on) before copying.
    let probeFeed: @Sendable () async throws -> Void
    public let metrics: CopyMetrics
    let logger: Logger
    /// `always` copies once per process, not again after a source failure.
    let copiedHere = NIOLockedValueBox(false)
    /// The copy's progress as of now: what `/readyz` says while it runs.
    let progress = NIOLockedValueBox<String?>(nil)
    public var activity: String? { progress.withLockedValue { $0 } }

    public init(client: KTRPCClient, mapping: KTMapping, mode: InitialCopyMode, pageSize: Int = 1000, rate: CopyRate = CopyRate(),
                maxBatchOps: Int = 10_000, maxBatchBytes: Int = 16 << 20, metrics: CopyMetrics = CopyMetrics(), logger: Logger,
                probeFeed: @escaping @Sendable () async throws -> Void) {
        self.client = client
        self.mapping = mapping
        self.mode = mode
        self.pageSize = pageSize
        self.rate = rate
        self.maxBatchOps = maxBatchOps
        self.maxBatchBytes = maxBatchBytes
        self.metrics = metrics
        self.logger = logger
        self.probeFeed = probeFeed
    }

    /// Run before the feed reads (and again after each source failure): copies when the
    /// root needs it and returns once the checkpoint is a feed position.
    public func prepare(root: RootWriter, sourceID: String) async throws {
        while true {
            let checkpoint = try await root.checkpoint(sourceID: sourceID)
            let stored = try await root.copyCursor(sourceID: sourceID)
            let state: (expected: UInt64, cursor: CopyCursor?)
            if let stored {
                guard mode != .never else {
                    throw FeedError.stop("the root holds an unfinished initial copy for source id \(sourceID) (checkpoint \(checkpoint ?? 0)); replaying the update log from there would miss the records not yet copied: restart with --initial-copy auto to finish the copy")
                }
                do {
                    state = (checkpoint ?? 0, try CopyCursor(decoding: stored))
                } catch {
                    throw FeedError.stop("the root's initial-copy cursor for source id \(sourceID) cannot be read (\(error)): it was written by another version; restart with --initial-copy always to copy again")
                }
            } else if mode == .never {
                if let checkpoint, checkpoint > 0, !SourcePosition.isKTTimestamp(checkpoint) {
                    throw FeedError.stop("the root's checkpoint for source id \(sourceID) is \(checkpoint), an initial copy's batch count, not a KT position: replaying the update log from there would miss what the copy had not reached. Restart with --initial-copy auto to copy again")
                }
                return
            } else if let checkpoint, checkpoint > 0, !SourcePosition.isKTTimestamp(checkpoint) {
                // A copy's batch count without its cursor: a root that mirrored a copy made
                // before log entries carried cursors. Start the copy again above it.
                logger.warning("the root's checkpoint for this source is an initial copy's batch count but holds no copy cursor (a mirrored root?): copying again from the start",
                               metadata: ["checkpoint": "\(checkpoint)"])
                state = (checkpoint, nil)
            } else if checkpoint == nil || (mode == .always && !copiedHere.withLockedValue { $0 }) {
                state = (checkpoint ?? 0, nil)
            } else {
                return
            }
            metrics.active.record(1)
            progress.withLockedValue { $0 = "initial copy of \(client.name) starting" }
            defer { metrics.active.record(0); progress.withLockedValue { $0 = nil } }
            if try await copy(root: root, sourceID: sourceID, expected: state.expected, resume: state.cursor) {
                copiedHere.withLockedValue { $0 = true }
                return
            }
            // Another bridge with the same source id moved the copy: read where it stands.
            logger.info("another bridge with this source id moved the initial copy; resuming from the root's cursor")
        }
    }

    struct Database {
        var index: UInt16
        var prefix: [UInt8]
        var ordered: Bool
    }

    /// The copy from `resume` (nil: a new copy above `expected`). Returns false when another
    /// bridge's batch got in first.
    private func copy(root: RootWriter, sourceID: String, expected: UInt64, resume: CopyCursor?) async throws -> Bool {
        try await client.withConnection { kt in
            let (databases, total, clockMillis) = try await self.check(kt)
            var position = expected
            var cursor: CopyCursor
            if let resume {
                cursor = resume
                logger.info("initial copy resuming", metadata: ["t0": "\(resume.t0)", "db": "\(resume.db)",
                                                                 "records": "\(resume.records)", "checkpoint": "\(expected)"])
            } else {
                try await probeFeed()
                let t0 = KTClock.pure(nowMillis: clockMillis - 1000)
                guard t0 > expected, t0 - expected > UInt64(UInt32.max) else {
                    throw FeedError.stop("--initial-copy always: the root's checkpoint \(expected) is not at least 5 s older than KT's clock (T0 \(t0)); wait a few seconds and start again")
                }
                cursor = CopyCursor(t0: t0, db: databases.first?.index ?? 0)
                // The copy's first batch records T0 before anything is read, so a restart
                // keeps it.
                guard try await write(root, sourceID, &position, [], cursor) else { return false }
                logger.info("initial copy starting", metadata: ["t0": "\(t0)", "databases": "\(databases.map { $0.index })",
                                                                 "records-expected": "\(total)", "page": "\(pageSize)", "rate": "\(rate)"])
            }
            metrics.expected.record(Double(total))
            var meter = Meter(startRecords: cursor.records, expected: total)
            for db in databases where db.index >= cursor.db {
                if db.index != cursor.db { cursor.db = db.index; cursor.lastKey = nil }
                // One cursor id per database: a KT cursor stays on the database it was made for.
                let cur: [(String, [UInt8])] = [("DB", Array(String(db.index).utf8)), ("CUR", Array(String(1 + Int(db.index)).utf8))]
                var start = try await jump(kt, db, cur, after: cursor.lastKey)
                if case .lost = start {
                    logger.warning("the last key copied is gone from KT's hash database and its cursor cannot continue after it: copying this database again from its first record",
                                   metadata: ["db": "\(db.index)"])
                    cursor.lastKey = nil
                    start = try await jump(kt, db, cur, after: nil)
                }
                guard case var .at(skipKey) = start else { continue }
                var done = false
                while !done {
                    let answers = try await kt.pipeline(Array(repeating: KTRPCCall("cur_get", cur + [("step", Array("true".utf8))]), count: pageSize))
                    var records = [(key: [UInt8], value: [UInt8], xt: UInt64?)]()
                    for a in answers {
                        if a.status == 450 { done = true; break }
                        guard a.status == 200, let key = a["key"], let value = a["value"] else {
                            throw KTRPCError.unexpected("cur_get on database \(db.index) answered \(a.status): \(a.error)")
                        }
                        if let k = skipKey {
                            skipKey = nil
                            if k == key { continue }
                        }
                        let xt = a["xt"].map { KTExpiration.parseInteger($0) }.flatMap { $0 >= KTExpiration.never ? nil : UInt64(max(0, $0)) }
                        records.append((key, value, xt))
                    }
                    var first = 0
                    while first < records.count {
                        var end = first, bytes = 0
                        while end < records.count, end - first < maxBatchOps {
                            let size = db.prefix.count + records[end].key.count + records[end].value.count
                            guard size <= maxBatchBytes else {
                                throw FeedError.stop("KT database \(db.index) holds a record too large for a batch to the root: key '\(printable(records[end].key))' with \(size) bytes, more than --batch-max-bytes \(maxBatchBytes). Raise --batch-max-bytes (and the root's --max-frame-bytes above it) and start the bridge again: the copy resumes before this record, nothing of its batch was written")
                            }
                            if end > first, bytes + size > maxBatchBytes { break }
                            bytes += size
                            end += 1
                        }
                        let chunk = records[first..<end]
                        try await pace(meter, records: chunk.count, bytes: bytes)
                        var next = cursor
                        next.lastKey = chunk.last?.key
                        next.records += UInt64(chunk.count)
                        next.bytes += UInt64(bytes)
                        let ops = chunk.map { Mutation.set(key: db.prefix + $0.key, value: $0.value, expiry: $0.xt) }
                        guard try await write(root, sourceID, &position, ops, next) else { return false }
                        cursor = next
                        meter.advance(records: chunk.count, bytes: bytes)
                        report(cursor, &meter)
                        first = end
                    }
                }
            }
            // Done: the checkpoint moves to T0 and the cursor goes; the feed follows from T0.
            let t0 = cursor.t0
            guard t0 > position else {
                throw FeedError.stop("the initial copy wrote \(position) batches, which reach its T0 \(t0): start again with --initial-copy always")
            }
            let r = try await root.copyBatch(sourceID: sourceID, expected: position, new: t0, operations: [], copyCursor: nil)
            guard case .applied = r else { return false }
            metrics.records.record(Double(cursor.records))
            metrics.eta.record(0)
            logger.info("initial copy finished; following the update log from T0",
                        metadata: ["t0": "\(t0)", "records": "\(cursor.records)", "bytes": "\(cursor.bytes)",
                                   "seconds": "\(String(format: "%.1f", meter.elapsed))"])
            return true
        }
    }

    /// One copy batch at `position + 1`; false on a conflict (another bridge moved on).
    private func write(_ root: RootWriter, _ sourceID: String, _ position: inout UInt64, _ ops: [Mutation], _ cursor: CopyCursor) async throws -> Bool {
        let r = try await root.copyBatch(sourceID: sourceID, expected: position, new: position + 1, operations: ops, copyCursor: cursor.encoded)
        guard case .applied = r else { return false }
        position += 1
        metrics.batches.increment()
        return true
    }

    /// Where a database's walk starts.
    enum Start {
        /// Nothing to copy (an empty database, or nothing after the last key copied).
        case done
        /// The cursor stands on a record; skip it if its key is `skip` (the last key copied).
        case at(skip: [UInt8]?)
        /// A hash database no longer holds the last key copied: its cursor order cannot
        /// continue after a missing key.
        case lost
    }

    /// Puts the cursor on `after`'s record (tree databases: the first key at or after it),
    /// or on the first record.
    private func jump(_ kt: KTRPCConnection, _ db: Database, _ cur: [(String, [UInt8])], after key: [UInt8]?) async throws -> Start {
        let a = try await kt.call("cur_jump", cur + (key.map { [("key", $0)] } ?? []))
        switch a.status {
        case 200: return .at(skip: key)
        case 450: return key == nil || db.ordered ? .done : .lost
        default: throw KTRPCError.unexpected("cur_jump on database \(db.index) answered \(a.status): \(a.error)")
        }
    }

    /// What must hold before anything is written: every mapped database exists, every
    /// database holding records is mapped (or `--on-unmapped count` says to skip it), and
    /// KT answers cursors on each. Returns the databases in order, KT's record count over
    /// them, and KT's clock in milliseconds.
    private func check(_ kt: KTRPCConnection) async throws -> ([Database], Int, UInt64) {
        let report = try await kt.call("report")
        guard report.status == 200, let clock = report.string("serv_current_time").flatMap(Double.init) else {
            throw FeedError.stop("\(client.name) answered report with \(report.status) (\(report.error)) and no serv_current_time: the initial copy needs KT's HTTP RPC on that port")
        }
        var present = [UInt16: (count: Int, path: String)]()
        for (name, value) in report.columns {
            let n = String(decoding: name, as: UTF8.self)
            guard n.hasPrefix("db_"), let i = UInt16(n.dropFirst(3)) else { continue }
            var count = 0, path = "?"
            for field in String(decoding: value, as: UTF8.self).split(separator: " ") {
                if field.hasPrefix("count=") { count = Int(field.dropFirst(6)) ?? 0 }
                if field.hasPrefix("path=") { path = String(field.dropFirst(5)) }
            }
            present[i] = (count, path)
        }
        for (i, db) in present.sorted(by: { $0.key < $1.key }) where mapping.prefixes[i] == nil && db.count > 0 {
            guard mapping.onUnmapped == .count else {
                throw FeedError.stop("KT database \(i) (\(db.path), \(db.count) records) is not mapped by --db-map: the initial copy would leave it out. Add \(i)=PREFIX to --db-map, or run with --on-unmapped count to leave it out on purpose")
            }
            logger.warning("initial copy leaves out an unmapped database (--on-unmapped count)", metadata: ["db": "\(i)", "path": "\(db.path)", "records": "\(db.count)"])
        }
        var databases = [Database]()
        var total = 0
        for (i, prefix) in mapping.prefixes.sorted(by: { $0.key < $1.key }) {
            guard let db = present[i] else {
                throw FeedError.stop("--db-map maps KT database \(i), which \(client.name) does not have (its report lists \(present.keys.sorted())): fix --db-map")
            }
            let dbParam = ("DB", Array(String(i).utf8))
            let status = try await kt.call("status", [dbParam])
            let type = status.string("type").flatMap { Int($0) } ?? 0
            let probe = try await kt.call("cur_jump", [dbParam, ("CUR", Array("1".utf8))])
            guard probe.status == 200 || probe.status == 450 else {
                throw FeedError.stop("KT refuses cursors on database \(i) (\(db.path)): cur_jump answered \(probe.status) (\(probe.error)). The initial copy reads KT through cursors; without them, run with --initial-copy never against a KT whose update log reaches back to its first record")
            }
            _ = try await kt.call("cur_delete", [("CUR", Array("1".utf8))])
            // Kyoto Cabinet's tree-like types (prototype tree, grass, tree, forest) end in 1.
            databases.append(Database(index: i, prefix: prefix, ordered: type & 0x0F == 1))
            total += db.count
        }
        return (databases, total, UInt64(clock * 1000))
    }

    /// Waits until reading `records` more records and `bytes` more bytes keeps within `--copy-rate`.
    private func pace(_ meter: Meter, records: Int, bytes: Int) async throws {
        let due = meter.began + rate.due(records: meter.records + records, bytes: meter.bytes + bytes)
        if due > .now { try await Task.sleep(until: due, clock: .continuous) }
    }

    private func report(_ cursor: CopyCursor, _ meter: inout Meter) {
        let rate = meter.rate
        let eta = meter.eta(copied: Int(cursor.records))
        metrics.records.record(Double(cursor.records))
        metrics.bytes.record(Double(cursor.bytes))
        metrics.rate.record(rate)
        if let eta { metrics.eta.record(eta) }
        let line = "copied \(cursor.records) of about \(meter.expected) records (\(cursor.bytes) bytes) at \(Int(rate)) records/s, ETA \(eta.map { "\(Int($0)) s" } ?? "?")"
        progress.withLockedValue { $0 = line }
        if ContinuousClock.now - meter.lastLog >= .seconds(10) {
            meter.lastLog = .now
            logger.info("initial copy progress", metadata: ["records": "\(cursor.records)", "records-expected": "\(meter.expected)",
                                                            "bytes": "\(cursor.bytes)", "records-per-second": "\(Int(rate))",
                                                            "eta-seconds": "\(eta.map { "\(Int($0))" } ?? "unknown")", "db": "\(cursor.db)"])
        }
    }

    /// This run's pace: records and bytes read since it began.
    struct Meter {
        let began = ContinuousClock.now
        var lastLog = ContinuousClock.now
        var records = 0
        var bytes = 0
        let startRecords: UInt64
        let expected: Int

        init(startRecords: UInt64, expected: Int) {
            self.startRecords = startRecords
            self.expected = expected
        }

        var elapsed: Double { (ContinuousClock.now - began).seconds }
        var rate: Double { Double(records) / max(elapsed, 0.001) }

        mutating func advance(records: Int, bytes: Int) {
            self.records += records
            self.bytes += bytes
        }

        func eta(copied: Int) -> Double? {
            guard rate > 0 else { return nil }
            return Double(max(expected - copied, 0)) / rate
        }
    }
}

private func printable(_ key: [UInt8]) -> String {
    let text = String(decoding: key.prefix(64), as: UTF8.self)
    return key.count > 64 ? text + "…" : text
}
