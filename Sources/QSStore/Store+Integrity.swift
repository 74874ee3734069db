import Foundation
import Metrics
import NIOConcurrencyHelpers
import QSBytes
import QSModel

/// What a store found damaged: the first problem (kept until a repair clears it), a
/// counter, and whoever is told (the node's log). Reads of a damaged record or log entry
/// throw; this is what `/readyz` and a replica's repair look at.
public final class StoreIntegrity: Sendable {
    private struct State {
        var problem: String?
        var found = 0
        /// Problems already told, so a damaged record read 10,000 times a second is
        /// logged once (and counted each time).
        var told = Set<String>()
    }

    private let state = NIOLockedValueBox(State())
    private let reporter = NIOLockedValueBox<(@Sendable (String) -> Void)?>(nil)
    /// `qs_store_corruption_detected_total`: reads that met a damaged record or log entry.
    let detected = Counter(label: "qs_store_corruption_detected_total")

    init() {}

    /// The first damage found since the store opened or was last repaired, nil when none.
    public var problem: String? { state.withLockedValue { $0.problem } }

    /// How many reads met damage.
    public var found: Int { state.withLockedValue { $0.found } }

    /// Tells `report` (once per distinct problem) what is found from now on, and what was
    /// found before it was set (at open).
    public func onProblem(_ report: @escaping @Sendable (String) -> Void) {
        reporter.withLockedValue { $0 = report }
        if let problem { report(problem) }
    }

    /// Records `error` when it says the store is damaged; other errors are ignored.
    func report(_ error: any Error) {
        guard let error = error as? StoreError, error.isDamage else { return }
        let text = "\(error)"
        let tell = state.withLockedValue { s -> Bool in
            s.found += 1
            if s.problem == nil { s.problem = text }
            guard s.told.count < 1000 else { return false }
            return s.told.insert(text).inserted
        }
        detected.increment()
        if tell, let report = reporter.withLockedValue({ $0 }) { report(text) }
    }

    /// Forgets what was found: the store's contents were replaced (a replica's repair).
    public func clear() {
        state.withLockedValue { $0 = State() }
    }
}

extension StoreError {
    /// Whether the error says the store's own contents are damaged.
    public var isDamage: Bool {
        switch self {
        case .corruptRecord, .brokenChain, .corrupt: return true
        default: return false
        }
    }

    /// Whether a snapshot received was refused for what it holds (its digest, head or
    /// hash chain is not what was announced): damaged on the way or at its sender, worth
    /// fetching again. Another history (`snapshotDiverged`) is not.
    public var refusesSnapshot: Bool {
        if case .snapshotMismatch = self { return true }
        return isDamage
    }

    /// The filesystem had no room for what was to be written (ENOSPC).
    public var isDiskFull: Bool {
        if case .diskFull = self { return true }
        return false
    }
}

/// What `Store.check()` found, in words.
public struct StoreCheckReport: Sendable {
    public var format = 0
    public var logEntriesChecked: UInt64 = 0
    public var recordsChecked = 0
    public var checkpointsChecked = 0
    /// Each problem, in words; empty when the store is sound.
    public var problems = [String]()
    /// Damaged records beyond the ones listed in `problems`.
    public var moreDamagedRecords = 0

    public var sound: Bool { problems.isEmpty }
}

extension StoreTransaction {
    /// Decodes a stored record, reporting damage to the store's integrity.
    func decodeRecord(_ storedKey: [UInt8], _ raw: [UInt8]) throws -> (key: [UInt8], record: Record) {
        do {
            return try RecordCodec.decode(storedKey: storedKey, raw, requireChecksum: store.requireChecksums)
        } catch {
            store.integrity.report(error)
            throw error
        }
    }

    /// Re-computes the chained hash of the newest `entries` log entries (from the hash the
    /// store keeps just before them) and checks them against the stored hashes and the
    /// head. Returns the number checked.
    @discardableResult
    public func verifyChainTail(entries: Int) throws -> UInt64 {
        let head = try head()
        let window = try logWindow()
        guard head.index >= window.firstIndex else {
            guard head.index + 1 == window.firstIndex, head.hash == window.baseHash || head.index == 0 else {
                throw StoreError.brokenChain(index: head.index)
            }
            return 0
        }
        let first = max(window.firstIndex, head.index >= UInt64(entries) ? head.index - UInt64(entries) + 1 : 1)
        guard var previous = try hash(at: first - 1) else { throw StoreError.brokenChain(index: first - 1) }
        var expected = first
        try txn.forEachInPlace(log, from: Store.encodeU64(first)) { k, v in
            let index = try Store.decodeU64(Array(k), "log index")
            guard index == expected, v.count >= 32 else { throw StoreError.brokenChain(index: expected) }
            let hash = ChainHash.next(previous: previous, entry: UnsafeRawBufferPointer(rebasing: v[32...]))
            guard hash.elementsEqual(v[0..<32]) else { throw StoreError.brokenChain(index: index) }
            previous = hash
            expected += 1
            return true
        }
        guard expected == head.index + 1, previous == head.hash else { throw StoreError.brokenChain(index: head.index) }
        return head.index + 1 - first
    }

    /// The chained hash at `index` as far as this store can prove it: a retained entry,
    /// the head, the retained window's base, or the trail of trimmed entries.
    public func provableHash(at index: UInt64) throws -> [UInt8]? {
        if let h = try hash(at: index) { return h }
        guard let trail = store.trail, let v = try txn.get(trail, Store.encodeU64(index)), v.count == 32 else { return nil }
        return v
    }

    /// Checks everything: the whole log chain, every record against its checksum, and the
    /// checkpoints (each decodes and stands at or past the last logged position of its
    /// source). Lists at most `maxListed` damaged records one by one.
    public func check(maxListed: Int = 20) throws -> StoreCheckReport {
        var report = StoreCheckReport()
        report.format = store.format
        if store.format < Store.currentFormat {
            report.problems.append("the store is in format \(store.format): its records carry no checksums; opening it read-write (starting qsnode on it) upgrades it to format \(Store.currentFormat)")
        }
        // The log: the chain, and the last position each source logged.
        var lastLogged = [String: UInt64]()
        do {
            let window = try logWindow()
            var previous = window.baseHash
            var expected = window.firstIndex
            try txn.forEach(log) { k, v in
                let index = try Store.decodeU64(k, "log index")
                guard index == expected else {
                    throw StoreError.corrupt("log entry \(index) found where entry \(expected) should be: entries are missing")
                }
                guard v.count >= 32 else { throw StoreError.corrupt("log entry \(index) is \(v.count) bytes, shorter than its hash") }
                let bytes = Array(v[32...])
                let hash = ChainHash.next(previous: previous, entry: bytes)
                guard hash == Array(v[0..<32]) else {
                    throw StoreError.corrupt("log entry \(index) does not match its chained hash: its bytes (or its stored hash) were altered")
                }
                do {
                    let entry = try LogEntry.decode(bytes)
                    if entry.movesCheckpoint { lastLogged[entry.origin.sourceID] = entry.origin.position }
                } catch {
                    throw StoreError.corrupt("log entry \(index) matches its hash but does not decode: \(error)")
                }
                previous = hash
                expected += 1
                report.logEntriesChecked += 1
                return true
            }
            let head = try head()
            if head.index != expected - 1 || head.hash != previous {
                report.problems.append("the head record says index \(head.index) hash \(hexString(head.hash)) but the log ends at index \(expected - 1) hash \(hexString(previous))")
            }
        } catch {
            report.problems.append("log: \(error)")
        }
        // Every record.
        var damaged = 0
        try txn.forEach(kv) { k, v in
            report.recordsChecked += 1
            do {
                _ = try RecordCodec.decode(storedKey: k, v, requireChecksum: store.requireChecksums)
            } catch {
                damaged += 1
                if damaged <= maxListed { report.problems.append("\(error)") } else { report.moreDamagedRecords += 1 }
            }
            return true
        }
        // Checkpoints.
        do {
            let cps = try checkpoints()
            report.checkpointsChecked = cps.count
            for (source, position) in lastLogged.sorted(by: { $0.key < $1.key }) {
                guard let cp = cps[source] else {
                    report.problems.append("source '\(source)' has logged entries (last at position \(position)) but no checkpoint")
                    continue
                }
                if cp < position {
                    report.problems.append("source '\(source)': checkpoint \(cp) is behind its last logged position \(position)")
                }
            }
        } catch {
            report.problems.append("checkpoints: \(error)")
        }
        return report
    }
}

extension Store {
    /// See `StoreTransaction.check`: one read transaction on a reader thread.
    public func check(maxListed: Int = 20) async throws -> StoreCheckReport {
        try await read { try $0.check(maxListed: maxListed) }
    }
}
