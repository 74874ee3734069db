import QSModel
import Foundation
import QSBytes

/// Why entries from elsewhere could not be appended.
public enum AppendError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The first entry's index does not follow the head.
    case notNext(head: UInt64, got: UInt64)
    /// The chained hash does not continue this log: another history.
    case diverged(index: UInt64)
    /// The entry bytes do not decode.
    case undecodable(index: UInt64, reason: String)

    public var description: String {
        switch self {
        case let .notNext(head, got): return "entry \(got) does not follow the head \(head)"
        case let .diverged(index): return "entry \(index) does not continue this log's hash chain: the histories diverged"
        case let .undecodable(index, reason):
            return "entry \(index) does not decode: \(reason)" + (isNewerFormat ? " (written by a newer node: upgrade this one, docs/protocol.md \"Log entries\")" : "")
        }
    }

    /// An entry of a version this build does not read (written by a newer node, e.g. a
    /// source's descriptor, version 3): not damage, and the same on every try.
    public var isNewerFormat: Bool {
        if case let .undecodable(_, reason) = self { return reason.contains("unsupported log entry version") }
        return false
    }

    /// What it says of entries that followed a subscription's checked start: damage, not
    /// another history.
    public var damageDescription: String {
        switch self {
        case let .notNext(head, got): return "an entry from the upstream (\(got)) does not follow this node's head \(head)"
        case let .diverged(index): return "entry \(index) from the upstream does not continue the hash chain"
        case let .undecodable(index, reason): return "entry \(index) from the upstream does not decode (\(reason))"
        }
    }
}

/// The retained part of the log: entries from `firstIndex` to the head.
public struct LogWindow: Sendable, Equatable {
    /// Oldest retained entry (head + 1 when the log is empty).
    public var firstIndex: UInt64
    /// Chained hash just before `firstIndex`.
    public var baseHash: [UInt8]
}

extension Store {
    static let logStartKey = Array("log-start".utf8)
}

/// How a root takes writes.
public enum WriteRole: String, Sendable, Equatable {
    /// Takes batches; its first compatible append makes it a mirror (a fresh root).
    case open
    /// A compatible mirror: takes compatible appends only (it followed another root's log
    /// from the start, or was demoted).
    case mirror
    /// Promoted from a mirror: takes batches, refuses compatible appends.
    case promoted
}

extension StoreTransaction {
    /// Appends entries made elsewhere (a replica's upstream, a compatible bridge's source)
    /// byte for byte: each must follow the head and continue the hash chain; its
    /// operations are applied as they are (no identical-write dropping). Returns the new
    /// head. Throws (and so rolls the whole transaction back) if any entry fails.
    @discardableResult
    public func appendEntries(_ entries: [StoredEntry], markCompatible: Bool = false) throws -> Head {
        try appendEntries(markCompatible: markCompatible) { each in
            for e in entries { try each(e.index, e.hash[...], e.bytes[...]) }
        }
    }

    /// `appendEntries` of a list read in place from a frame (a replica's catch-up): the
    /// same checks and the same bytes stored, with no array per hash and entry.
    @discardableResult
    public func appendEntries(_ entries: PackedEntries, markCompatible: Bool = false) throws -> Head {
        try appendEntries(markCompatible: markCompatible) { each in try entries.forEach(each) }
    }

    private func appendEntries(markCompatible: Bool,
                               _ walk: ((UInt64, ArraySlice<UInt8>, ArraySlice<UInt8>) throws -> Void) throws -> Void) throws -> Head {
        try requireWritable()
        if markCompatible {
            guard try writeRole() != .promoted else { throw StoreError.promoted }
            try txn.put(meta, Store.modeKey, Store.compatibleMode)
        }
        var head = try head()
        // Each origin's checkpoint (and initial-copy cursor) as of its last entry here:
        // stored once a source, after the entries, in this same transaction.
        var positions = [String: (position: UInt64, copyCursor: [UInt8]?)]()
        // Each source's descriptor as its last version-3 entry here recorded it.
        var descriptors = [String: String]()
        try withKeyspaceWriter { writer in
            try walk { index, hash, bytes in
                guard index == head.index + 1 else { throw AppendError.notNext(head: head.index, got: index) }
                let computed = bytes.withUnsafeBytes { ChainHash.next(previous: head.hash, entry: $0) }
                guard computed[...] == hash else { throw AppendError.diverged(index: index) }
                let entry: LogEntry.Packed
                do { entry = try LogEntry.decodePacked(bytes) } catch {
                    throw AppendError.undecodable(index: index, reason: "\(error)")
                }
                try entry.operations.forEach { _ = try apply($0, writer) }
                try txn.put(log, Store.encodeU64(index), reserving: computed.count + bytes.count, append: true) { out in
                    computed.withUnsafeBytes { out.copyMemory(from: $0) }
                    bytes.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: out[computed.count...]).copyMemory(from: $0) }
                }
                head = Head(index: index, hash: computed, commitTimeNs: entry.commitTimeNs)
                // The origin's checkpoint (and initial-copy cursor) moves with the entry, so a
                // replica's or a mirror's checkpoints equal its root's.
                // A descriptor's entry moves neither (its position is only what it was).
                if let descriptor = entry.descriptor {
                    descriptors[entry.origin.sourceID] = descriptor
                } else {
                    positions[entry.origin.sourceID] = (entry.origin.position, entry.copyCursor)
                }
            }
        }
        for (sourceID, p) in positions { try storePosition(sourceID: sourceID, position: p.position, copyCursor: p.copyCursor) }
        for (sourceID, d) in descriptors { try txn.put(meta, Store.descriptorPrefix + Array(sourceID.utf8), Array(d.utf8)) }
        try store.writeHead(head, txn)
        return head
    }

    /// Whether this store mirrors another root's log (has accepted compatible appends).
    public func isCompatibleMirror() throws -> Bool {
        try txn.get(meta, Store.modeKey) == Store.compatibleMode
    }

    /// How this store, as a root, takes writes (see `WriteRole`).
    public func writeRole() throws -> WriteRole {
        switch try txn.get(meta, Store.modeKey) {
        case nil: return .open
        case Store.compatibleMode?: return .mirror
        case Store.promotedMode?: return .promoted
        case let other?: throw StoreError.corrupt("unknown write mode '\(String(decoding: other, as: UTF8.self))'")
        }
    }

    /// Makes this root a writable root that refuses compatible appends (`.promoted`) or a
    /// compatible mirror continuing its own head (`.mirror`). The log, the keyspace and the
    /// checkpoints are untouched. Returns the head the change happened at.
    @discardableResult
    public func setWriteRole(_ role: WriteRole) throws -> Head {
        try requireWritable()
        switch role {
        case .open: _ = try txn.delete(meta, Store.modeKey)
        case .mirror: try txn.put(meta, Store.modeKey, Store.compatibleMode)
        case .promoted:
            try txn.put(meta, Store.modeKey, Store.promotedMode)
            // The sources this mirror followed were checked by this promote: a later
            // mirroring names its own.
            _ = try txn.delete(meta, Store.mirrorSourcesKey)
        }
        return try head()
    }

    /// The roots compatible bridges said they read into this store (`source=` in their
    /// hello), newest last: kept across restarts so that `qsctl promote` asks a mirror's
    /// sources even when no bridge is connected. Metadata only: not in the log.
    public func mirrorSourcesSeen() throws -> [String] {
        guard let raw = try txn.get(meta, Store.mirrorSourcesKey) else { return [] }
        return String(decoding: raw, as: UTF8.self).split(separator: "\n").map(String.init)
    }

    /// Replaces the list `mirrorSourcesSeen` reads.
    public func setMirrorSourcesSeen(_ sources: [String]) throws {
        try requireWritable()
        try txn.put(meta, Store.mirrorSourcesKey, Array(sources.joined(separator: "\n").utf8))
    }

    /// The retained window of the log.
    public func logWindow() throws -> LogWindow {
        guard let raw = try txn.get(meta, Store.logStartKey) else {
            return LogWindow(firstIndex: 1, baseHash: Head.empty.hash)
        }
        var r = ByteReader(raw)
        return LogWindow(firstIndex: try r.readU64(), baseHash: try r.readBytes(32))
    }

    /// The chained hash at `index` if this node still knows it (the head, a retained
    /// entry, or the base of the retained window), nil otherwise.
    public func hash(at index: UInt64) throws -> [UInt8]? {
        let head = try head()
        if index == head.index { return head.hash }
        guard index < head.index else { return nil }
        let w = try logWindow()
        if index + 1 == w.firstIndex { return w.baseHash }
        guard index >= w.firstIndex, let v = try txn.get(log, Store.encodeU64(index)), v.count >= 32 else { return nil }
        return Array(v[0..<32])
    }

    /// Drops log entries so that at most `retain` remain (the keyspace is untouched),
    /// at most `maxPerCall` of them so the transaction stays short.
    @discardableResult
    public func trimLog(retain: UInt64, maxPerCall: Int = 10_000) throws -> Int {
        try requireWritable()
        let head = try head()
        var w = try logWindow()
        guard head.index > retain, w.firstIndex <= head.index - retain else { return 0 }
        let until = min(head.index - retain, w.firstIndex + UInt64(maxPerCall) - 1)
        var base = w.baseHash
        var removed = 0
        var i = w.firstIndex
        while i <= until {
            if let v = try txn.get(log, Store.encodeU64(i)), v.count >= 32 {
                base = Array(v[0..<32])
                // The hash outlives the entry: a replica stopped at `i` can still prove
                // that a snapshot of this store continues its history.
                if let trail = store.trail { try txn.put(trail, Store.encodeU64(i), base, append: true) }
            }
            try txn.delete(log, Store.encodeU64(i))
            removed += 1
            i += 1
        }
        // The trail keeps the newest `trailLimit` hashes.
        if let trail = store.trail, until > Store.trailLimit {
            var doomed = [[UInt8]]()
            try txn.forEach(trail) { k, _ in
                guard doomed.count < removed, try Store.decodeU64(k, "trail index") <= until - Store.trailLimit else { return false }
                doomed.append(k)
                return true
            }
            for k in doomed { try txn.delete(trail, k) }
        }
        w = LogWindow(firstIndex: until + 1, baseHash: base)
        try txn.put(meta, Store.logStartKey, Store.encodeU64(w.firstIndex) + w.baseHash)
        return removed
    }

    /// Replaces this store's keyspace, log and checkpoints with another store's (a
    /// downloaded snapshot): readers see the old state or the new one, never a mix. The
    /// node keeps its own identity. Every record is checked against its checksum on the
    /// way (a damaged snapshot is refused: nothing changes) and written in this store's
    /// format (a format 1 snapshot's records get their checksums). Returns the new head.
    @discardableResult
    public func replaceContents(with other: Store) throws -> Head {
        try requireWritable()
        try txn.removeAll(kv)
        try txn.removeAll(log)
        if let trail = store.trail { try txn.removeAll(trail) }
        let identity = try txn.get(meta, Store.identityKey)
        try txn.removeAll(meta)
        try other.engine.read { src in
            try src.forEach(.kv) { k, v in
                let (full, record) = try RecordCodec.decode(storedKey: k, v, requireChecksum: other.requireChecksums)
                let checked = v.first.map { $0 & RecordCodec.checksumFlag != 0 } ?? false
                try txn.put(kv, k, checked ? v : RecordCodec.encode(record, storedKey: k, fullKey: keys.isLong(full) ? full : nil),
                            append: true)
                return true
            }
            try src.forEach(.log) { k, v in
                try txn.put(log, k, v, append: true)
                return true
            }
            if let theirs = other.trail, let mine = store.trail {
                try src.forEach(theirs) { k, v in
                    try txn.put(mine, k, v, append: true)
                    return true
                }
            }
            try src.forEach(.meta) { k, v in
                if k != Store.identityKey && k != Store.formatKey { try txn.put(meta, k, v) }
                return true
            }
        }
        try txn.put(meta, Store.formatKey, [UInt8(store.format)])
        if let identity { try txn.put(meta, Store.identityKey, identity) }
        return try head()
    }
}

extension Store {
    /// Appends entries made elsewhere (see `StoreTransaction.appendEntries`) in one write
    /// transaction on the writer thread; nothing is written if any entry fails.
    @discardableResult
    public func appendEntries(_ entries: [StoredEntry], markCompatible: Bool = false) async throws -> Head {
        try await write { try $0.appendEntries(entries, markCompatible: markCompatible) }
    }

    /// `appendEntries` of a list read in place (see `StoreTransaction.appendEntries(_:markCompatible:)`).
    @discardableResult
    public func appendEntries(_ entries: PackedEntries, markCompatible: Bool = false) async throws -> Head {
        try await write { try $0.appendEntries(entries, markCompatible: markCompatible) }
    }

    /// Whether this store mirrors another root's log (has accepted compatible appends).
    public func isCompatibleMirror() async throws -> Bool { try await read { try $0.isCompatibleMirror() } }

    /// The retained window of the log.
    public func logWindow() async throws -> LogWindow { try await read { try $0.logWindow() } }

    /// See `StoreTransaction.writeRole`.
    public func writeRole() async throws -> WriteRole { try await read { try $0.writeRole() } }

    /// See `StoreTransaction.setWriteRole`: one durable write transaction on the writer thread.
    @discardableResult
    public func setWriteRole(_ role: WriteRole) async throws -> Head { try await write { try $0.setWriteRole(role) } }

    /// See `StoreTransaction.hash(at:)`.
    public func hash(at index: UInt64) async throws -> [UInt8]? { try await read { try $0.hash(at: index) } }

    /// Trims the log to at most `retain` entries, `maxPerCall` at most, in one short write
    /// transaction on the background thread: trimming never sits in the writer's queue
    /// (LMDB still lets one write transaction run at a time).
    @discardableResult
    public func trimLog(retain: UInt64, maxPerCall: Int = 10_000) async throws -> Int {
        try await background.run { try self.writeNow { try $0.trimLog(retain: retain, maxPerCall: maxPerCall) } }
    }

    /// Replaces this store's contents with another store's in one write transaction on
    /// the writer thread (see `StoreTransaction.replaceContents`).
    @discardableResult
    public func replaceContents(with other: Store) async throws -> Head {
        try await write { try $0.replaceContents(with: other) }
    }
}
