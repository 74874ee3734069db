import QSBytes
import QSModel

/// A request from a client to a node. Type bytes `0x01…0x7F`.
public enum Request: Sendable, Equatable {
    /// Compare-and-swap write: apply `operations` if `sourceID`'s checkpoint is `expected`,
    /// then store `new` as the checkpoint.
    case batch(Batch)
    /// Compare-and-swap write of conditional writes (`ConditionalWrite`): like `batch`, but
    /// the root decides each write against its current state in the same transaction and
    /// answers `written` with each write's outcome.
    case writes(Writes)
    /// The source's checkpoint.
    case getCheckpoint(sourceID: String)
    /// The log head: index, chained hash, commit time.
    case head
    /// Log entries from `from`, at most `count`.
    case readLog(from: UInt64, count: UInt32)
    /// One key's live record.
    case get(key: [UInt8])
    /// One page of live records with `prefix`, continuing after `cursor` (empty: start),
    /// expiry judged at `asOf` (epoch seconds; 0: the node's clock).
    case scan(prefix: [UInt8], cursor: [UInt8], limit: UInt32, asOf: UInt64)
    /// Stream log entries after `fromIndex`, whose chained hash must be `hash` here too;
    /// the connection then carries `entries` and `heartbeat` frames until closed. `token`:
    /// the node's replication token (empty when it has none).
    case subscribe(fromIndex: UInt64, hash: [UInt8], token: [UInt8])
    /// A snapshot of the whole environment, streamed as `snapshotBegin`, `snapshotChunk`s
    /// and `snapshotEnd`; `token` as for subscribe.
    case snapshot(token: [UInt8])
    /// A snapshot that continues one the client holds part of (`resume`), or from the start
    /// (nil). Answered with `snapshotStart` (where the chunks that follow begin),
    /// `snapshotChunk`s and `snapshotDone` (the digest of the whole file). Nodes that
    /// predate it refuse it as malformed; the client then asks with `snapshot`.
    case snapshotFrom(token: [UInt8], resume: SnapshotResume?)
    /// Compatible-mode write: append these entries verbatim (the target's head must be the
    /// first entry's index − 1 and the chained hash must continue). `sourceTimeNs`: the
    /// source root's freshest word the sender has (ns since the epoch, 0 unknown), which a
    /// mirror passes on to its replicas as the root's time. The entries stay as the frame
    /// carries them (`PackedEntries`): a root appends them from the request's bytes.
    case append(token: [UInt8], entries: PackedEntries, sourceTimeNs: UInt64 = 0)
    /// Digest of the live records after `after` (stored-key cursor; empty: start) up to and
    /// including `through` (empty: no bound), at most `limit`, expiry judged at `asOf`.
    case digest(after: [UInt8], through: [UInt8], limit: UInt32, asOf: UInt64)
    /// The node's role, head, checkpoints, upstream and freshness.
    case status
    /// Live records in the stored-key range (`after`, `through`] (empty: unbounded), at most
    /// `limit`, expiry judged at `asOf`: what `verify` lists when a range's digests differ.
    case rangeRecords(after: [UInt8], through: [UInt8], limit: UInt32, asOf: UInt64)
    /// A writer introduces itself: the write token is checked at once (a wrong one is
    /// refused now, not at the first write) and `client` (what the writer is and reads,
    /// e.g. `qsqsbridge mode=compatible source=qs://L`) is shown in the node's status.
    /// Answered with the node's Head.
    case hello(token: [UInt8], client: String)
    /// An operator's role change of a root (`qsctl promote|demote`), authenticated with the
    /// write token; answered with the head the change happened at.
    case changeRole(token: [UInt8], change: RoleChange)
    /// Where a source's unfinished initial copy stands (`Batch.copyCursor`), answered with
    /// a Value holding the cursor bytes (absent: no copy in progress).
    case getCopyCursor(sourceID: String)
    /// A reader presents one of the node's tokens (write, replication or admin): the
    /// connection may then read (get, scan, log, head, status, checkpoints, digests) from
    /// another machine. Answered with the node's Head, or `unauthorized` and the connection
    /// closes. A peer on the node's machine reads without it.
    case auth(token: [UInt8])
    /// A writer records its source's descriptor (`SourceDescriptor`: how it maps what it
    /// reads into keys) at the root: stored when the root holds none, or another and
    /// `replace` is set, with a version-3 log entry; another one held and `replace` not set
    /// changes nothing. Answered with a Value holding the descriptor the root holds after
    /// the request (so another one than sent: refused). Nodes that predate it refuse it as
    /// malformed; a writer asks only a root whose status lists `source_descriptors`.
    case setDescriptor(token: [UInt8], sourceID: String, descriptor: String, replace: Bool)

    /// What `changeRole` asks of a root.
    public enum RoleChange: UInt8, Sendable, Equatable {
        /// A compatible mirror becomes a writable root continuing the same log; it then
        /// refuses compatible appends.
        case promote = 1
        /// A root becomes a compatible mirror continuing its own head; it then refuses batches.
        case demote = 2
    }

    public struct Writes: Sendable, Equatable {
        public var token: [UInt8]
        public var sourceID: String
        public var expected: UInt64
        public var new: UInt64
        public var writes: [ConditionalWrite]

        public init(token: [UInt8] = [], sourceID: String, expected: UInt64, new: UInt64, writes: [ConditionalWrite]) {
            self.token = token
            self.sourceID = sourceID
            self.expected = expected
            self.new = new
            self.writes = writes
        }
    }

    public struct Batch: Sendable, Equatable {
        public var token: [UInt8]
        public var sourceID: String
        public var expected: UInt64
        public var new: UInt64
        /// The operations as the frame carries them (a decoded request's share the frame's
        /// bytes): a root applies them in place.
        public var packed: PackedMutations
        /// An initial copy's resume point, stored with the checkpoint in the same
        /// transaction (the bridge's own bytes: T0, database, last key copied). A batch
        /// without one removes the source's cursor: the copy is over. Sent as a trailing
        /// `cursor:blob32` only when present, so the frame is otherwise unchanged.
        public var copyCursor: [UInt8]?

        public init(token: [UInt8] = [], sourceID: String, expected: UInt64, new: UInt64, operations: [Mutation],
                    copyCursor: [UInt8]? = nil) {
            self.init(token: token, sourceID: sourceID, expected: expected, new: new, packed: PackedMutations(operations),
                      copyCursor: copyCursor)
        }

        public init(token: [UInt8] = [], sourceID: String, expected: UInt64, new: UInt64, packed: PackedMutations,
                    copyCursor: [UInt8]? = nil) {
            self.token = token
            self.sourceID = sourceID
            self.expected = expected
            self.new = new
            self.packed = packed
            self.copyCursor = copyCursor
        }

        /// The operations decoded, each key and value an array of its own.
        public var operations: [Mutation] { packed.mutations }
    }

    enum Tag: UInt8 {
        case batch = 0x01, getCheckpoint = 0x02, head = 0x03, readLog = 0x04, get = 0x05, scan = 0x06, writes = 0x07
        case subscribe = 0x10, snapshot = 0x11, append = 0x12, digest = 0x13, status = 0x14, rangeRecords = 0x15
        case hello = 0x20, auth = 0x21
        case changeRole = 0x16, getCopyCursor = 0x17, snapshotFrom = 0x18, setDescriptor = 0x19
    }

    /// True for requests that change state (and so must carry the write token).
    public var isWrite: Bool {
        switch self {
        case .batch, .writes, .append, .hello, .changeRole, .setDescriptor: return true
        default: return false
        }
    }

    /// True for the replication streams (which carry the replication token).
    public var isReplication: Bool {
        switch self {
        case .subscribe, .snapshot, .snapshotFrom: return true
        default: return false
        }
    }

    /// The token a request carries: the write token of a write, the replication token of
    /// a subscription or snapshot (empty for reads).
    public var token: [UInt8] {
        switch self {
        case let .batch(b): return b.token
        case let .append(token, _, _): return token
        case let .writes(w): return w.token
        case let .subscribe(_, _, token), let .snapshot(token), let .snapshotFrom(token, _): return token
        case let .hello(token, _): return token
        case let .changeRole(token, _): return token
        case let .setDescriptor(token, _, _, _): return token
        case let .auth(token): return token
        default: return []
        }
    }

    public var name: String {
        switch self {
        case .batch: return "batch"
        case .writes: return "writes"
        case .getCheckpoint: return "get-checkpoint"
        case .getCopyCursor: return "get-copy-cursor"
        case .head: return "head"
        case .readLog: return "read-log"
        case .get: return "get"
        case .scan: return "scan"
        case .subscribe: return "subscribe"
        case .snapshot, .snapshotFrom: return "snapshot"
        case .append: return "append"
        case .digest: return "digest"
        case .status: return "status"
        case .rangeRecords: return "range-records"
        case .hello: return "hello"
        case .auth: return "auth"
        case let .changeRole(_, change): return change == .promote ? "promote" : "demote"
        case .setDescriptor: return "set-descriptor"
        }
    }

    public func frame() -> Frame {
        var w = ByteWriter()
        let tag: Tag
        switch self {
        case let .batch(b):
            tag = .batch
            w.writeBlob32(b.token)
            w.writeString16(b.sourceID)
            w.writeU64(b.expected)
            w.writeU64(b.new)
            w.writeBytes(b.packed.bytes)
            if let cursor = b.copyCursor { w.writeBlob32(cursor) }
        case let .writes(b):
            tag = .writes
            w.writeBlob32(b.token)
            w.writeString16(b.sourceID)
            w.writeU64(b.expected)
            w.writeU64(b.new)
            ConditionalWrite.encodeList(b.writes, into: &w)
        case let .getCheckpoint(sid):
            tag = .getCheckpoint
            w.writeString16(sid)
        case let .getCopyCursor(sid):
            tag = .getCopyCursor
            w.writeString16(sid)
        case .head:
            tag = .head
        case let .readLog(from, count):
            tag = .readLog
            w.writeU64(from)
            w.writeU32(count)
        case let .get(key):
            tag = .get
            w.writeBlob32(key)
        case let .scan(prefix, cursor, limit, asOf):
            tag = .scan
            w.writeBlob32(prefix)
            w.writeBlob32(cursor)
            w.writeU32(limit)
            w.writeU64(asOf)
        case let .subscribe(from, hash, token):
            tag = .subscribe
            w.writeU64(from)
            w.writeBytes(hash)
            // Without a token the frame is the one nodes before replication tokens read.
            if !token.isEmpty { w.writeBlob32(token) }
        case let .snapshot(token):
            tag = .snapshot
            if !token.isEmpty { w.writeBlob32(token) }
        case let .snapshotFrom(token, resume):
            tag = .snapshotFrom
            w.writeBlob32(token)
            w.writeU64(resume?.offset ?? 0)
            if let resume, resume.offset > 0 {
                w.writeU64(resume.index)
                w.writeBytes(resume.hash)
                w.writeU64(resume.size)
                w.writeBytes(resume.digest)
            }
        case let .append(token, entries, sourceTimeNs):
            tag = .append
            w.writeBlob32(token)
            w.writeBytes(entries.bytes)
            // Without a time the frame is the one nodes before it read.
            if sourceTimeNs != 0 { w.writeU64(sourceTimeNs) }
        case let .digest(after, through, limit, asOf):
            tag = .digest
            w.writeBlob32(after)
            w.writeBlob32(through)
            w.writeU32(limit)
            w.writeU64(asOf)
        case .status:
            tag = .status
        case let .rangeRecords(after, through, limit, asOf):
            tag = .rangeRecords
            w.writeBlob32(after)
            w.writeBlob32(through)
            w.writeU32(limit)
            w.writeU64(asOf)
        case let .hello(token, client):
            tag = .hello
            w.writeBlob32(token)
            w.writeString16(client)
        case let .auth(token):
            tag = .auth
            w.writeBlob32(token)
        case let .changeRole(token, change):
            tag = .changeRole
            w.writeBlob32(token)
            w.writeU8(change.rawValue)
        case let .setDescriptor(token, sid, descriptor, replace):
            tag = .setDescriptor
            w.writeBlob32(token)
            w.writeString16(sid)
            w.writeString16(descriptor)
            w.writeU8(replace ? 1 : 0)
        }
        return Frame(type: tag.rawValue, payload: w.bytes)
    }

    public static func decode(_ frame: Frame) throws -> Request {
        // A writer's request in its checked envelope: checked, then decoded as it is.
        if frame.type == CheckedFrames.tag { return try decode(CheckedFrames.unwrap(frame)) }
        guard let tag = Tag(rawValue: frame.type) else {
            throw DecodeError(offset: 4, reason: "unknown request type 0x\(hexString([frame.type]))")
        }
        var r = ByteReader(frame.payload)
        let req: Request
        switch tag {
        case .batch:
            let token = try r.readBlob32("token")
            let sid = try r.readString16("source id")
            let expected = try r.readU64("expected position")
            let new = try r.readU64("new position")
            let ops = try PackedMutations.read(from: &r)
            let cursor = r.remaining > 0 ? try r.readBlob32("copy cursor") : nil
            req = .batch(Batch(token: token, sourceID: sid, expected: expected, new: new, packed: ops, copyCursor: cursor))
        case .writes:
            let token = try r.readBlob32("token")
            let sid = try r.readString16("source id")
            let expected = try r.readU64("expected position")
            let new = try r.readU64("new position")
            let writes = try ConditionalWrite.decodeList(from: &r)
            req = .writes(Writes(token: token, sourceID: sid, expected: expected, new: new, writes: writes))
        case .getCheckpoint:
            req = .getCheckpoint(sourceID: try r.readString16("source id"))
        case .getCopyCursor:
            req = .getCopyCursor(sourceID: try r.readString16("source id"))
        case .head:
            req = .head
        case .readLog:
            req = .readLog(from: try r.readU64("from index"), count: try r.readU32("count"))
        case .get:
            req = .get(key: try r.readBlob32("key"))
        case .scan:
            req = .scan(prefix: try r.readBlob32("prefix"), cursor: try r.readBlob32("cursor"),
                        limit: try r.readU32("limit"), asOf: try r.readU64("as-of time"))
        case .subscribe:
            let from = try r.readU64("from index"), hash = try r.readBytes(32, "hash")
            req = .subscribe(fromIndex: from, hash: hash, token: r.remaining > 0 ? try r.readBlob32("token") : [])
        case .snapshot:
            req = .snapshot(token: r.remaining > 0 ? try r.readBlob32("token") : [])
        case .snapshotFrom:
            let token = try r.readBlob32("token")
            let offset = try r.readU64("offset")
            var resume: SnapshotResume?
            if offset > 0 {
                resume = SnapshotResume(index: try r.readU64("index"), hash: try r.readBytes(32, "hash"), size: try r.readU64("size"),
                                        offset: offset, digest: try r.readBytes(16, "digest"))
            }
            req = .snapshotFrom(token: token, resume: resume)
        case .append:
            let token = try r.readBlob32("token"), entries = try PackedEntries.read(from: &r)
            req = .append(token: token, entries: entries, sourceTimeNs: r.remaining > 0 ? try r.readU64("source time") : 0)
        case .digest:
            req = .digest(after: try r.readBlob32("after"), through: try r.readBlob32("through"),
                          limit: try r.readU32("limit"), asOf: try r.readU64("as-of time"))
        case .status:
            req = .status
        case .rangeRecords:
            req = .rangeRecords(after: try r.readBlob32("after"), through: try r.readBlob32("through"),
                                limit: try r.readU32("limit"), asOf: try r.readU64("as-of time"))
        case .hello:
            req = .hello(token: try r.readBlob32("token"), client: try r.readString16("client"))
        case .auth:
            req = .auth(token: try r.readBlob32("token"))
        case .changeRole:
            let token = try r.readBlob32("token")
            let raw = try r.readU8("role change")
            guard let change = RoleChange(rawValue: raw) else {
                throw DecodeError(offset: 4, reason: "unknown role change \(raw): 1 promote, 2 demote")
            }
            req = .changeRole(token: token, change: change)
        case .setDescriptor:
            let token = try r.readBlob32("token")
            let sid = try r.readString16("source id")
            let descriptor = try r.readString16("source descriptor")
            let raw = try r.readU8("replace")
            guard raw <= 1 else { throw DecodeError(offset: 4, reason: "replace is \(raw): 0 or 1") }
            req = .setDescriptor(token: token, sourceID: sid, descriptor: descriptor, replace: raw == 1)
        }
        try r.expectEnd("\(req.name) request")
        return req
    }
}

/// Error codes a node sends in an `error` response.
public enum ErrorCode: UInt16, Sendable, CustomStringConvertible {
    case malformed = 1
    case frameTooLarge = 2
    case unauthorized = 3
    case invalidRequest = 4
    case storageFull = 5
    case storageError = 6
    case unsupported = 7
    case shuttingDown = 8
    /// Subscribe: the hash at the replica's head differs here (another history).
    case diverged = 9
    /// Subscribe: this node no longer retains the entries after the replica's head.
    case needsBootstrap = 10
    /// Subscribe: the replica is ahead of this node.
    case behind = 11
    /// A write sent to a node that does not take writes (a replica).
    case notWritable = 12
    /// The filesystem holding the node's store has no room left (ENOSPC): nothing was
    /// written; the same request succeeds once there is room.
    case diskFull = 13
    /// A read whose large answer the node has no room for now: the replies its clients have
    /// not read yet hold the whole `--read-reply-memory`. Nothing changed; the same request
    /// succeeds once they are read (or their connections close).
    case busy = 14
    /// A checked frame whose bytes do not match its checksum (damaged on the way):
    /// nothing was applied; the same request, sent again, is.
    case damaged = 15
    public var description: String {
        switch self {
        case .malformed: return "malformed"
        case .frameTooLarge: return "frame-too-large"
        case .unauthorized: return "unauthorized"
        case .invalidRequest: return "invalid-request"
        case .storageFull: return "storage-full"
        case .storageError: return "storage-error"
        case .unsupported: return "unsupported"
        case .shuttingDown: return "shutting-down"
        case .diverged: return "diverged"
        case .needsBootstrap: return "needs-bootstrap"
        case .behind: return "behind"
        case .notWritable: return "not-writable"
        case .diskFull: return "disk-full"
        case .busy: return "busy"
        case .damaged: return "damaged"
        }
    }
}

/// A node's answer. Type bytes `0x80…0xFF`.
public enum Response: Sendable, Equatable {
    case applied(logIndex: UInt64?, kept: UInt32, dropped: UInt32)
    /// A `writes` request applied: the new entry's index (nil when nothing changed) and
    /// each write's outcome, in order.
    case written(logIndex: UInt64?, outcomes: [ConditionalWrite.Outcome])
    case conflict(current: UInt64)
    case checkpoint(UInt64?)
    case head(Head)
    case entries([StoredEntry])
    case value(Record?)
    case page(records: [ScanRecord], next: [UInt8]?)
    case error(code: UInt16, message: String)
    /// On a subscription: the upstream's head and when the root last had word of it
    /// (ns since the epoch; for a root, its own clock).
    case heartbeat(head: UInt64, rootTimeNs: UInt64)
    /// A snapshot starts: it stands at `index`/`hash` and has `size` bytes.
    case snapshotBegin(index: UInt64, hash: [UInt8], size: UInt64)
    case snapshotChunk([UInt8])
    case snapshotEnd
    /// The answer to `snapshotFrom`: the snapshot stands at `index`/`hash`, has `size`
    /// bytes, and the chunks that follow start at `offset` (0: from the start, and the
    /// client drops whatever it held).
    case snapshotStart(index: UInt64, hash: [UInt8], size: UInt64, offset: UInt64)
    /// The end of a `snapshotFrom` stream: XXH3-128 of the whole snapshot, 16 bytes.
    case snapshotDone(digest: [UInt8])
    /// Sent every second to a `snapshotFrom` client until its snapshot starts (waiting its
    /// turn, or while the sender digests the prefix a resume holds): `queued` snapshot
    /// requests wait at the node. Keeps the client's idle timeout from closing a
    /// connection that is only waiting.
    case snapshotWaiting(queued: UInt32)
    /// A digest of a key range: how many live records, SHA-256 over them, and the last
    /// stored key covered (empty when none), with whether records remain after it.
    case digest(count: UInt64, hash: [UInt8], last: [UInt8], more: Bool)
    /// The node's status as a JSON object.
    case status(String)

    public struct ScanRecord: Sendable, Equatable {
        public var key: [UInt8]
        public var record: Record

        public init(key: [UInt8], record: Record) {
            self.key = key
            self.record = record
        }
    }

    enum Tag: UInt8 {
        case applied = 0x81, conflict = 0x82, checkpoint = 0x83, head = 0x84, entries = 0x85,
             value = 0x86, page = 0x87, heartbeat = 0x88, snapshotBegin = 0x89, snapshotChunk = 0x8A,
             snapshotEnd = 0x8B, digest = 0x8C, status = 0x8D, written = 0x8E, snapshotStart = 0x8F,
             snapshotDone = 0x90, snapshotWaiting = 0x91, error = 0xEF
    }

    public static func error(_ code: ErrorCode, _ message: String) -> Response {
        .error(code: code.rawValue, message: message)
    }

    public func frame() -> Frame {
        // A snapshot chunk's bytes are the frame's payload as they are: no copy.
        if case let .snapshotChunk(bytes) = self { return Frame(type: Tag.snapshotChunk.rawValue, payload: bytes) }
        var w = ByteWriter()
        let tag: Tag
        switch self {
        case let .applied(index, kept, dropped):
            tag = .applied
            w.writeU64(index ?? 0)
            w.writeU32(kept)
            w.writeU32(dropped)
        case let .written(index, outcomes):
            tag = .written
            w.writeU64(index ?? 0)
            w.writeU32(UInt32(outcomes.count))
            for o in outcomes { o.encode(into: &w) }
        case let .conflict(current):
            tag = .conflict
            w.writeU64(current)
        case let .checkpoint(cp):
            tag = .checkpoint
            w.writeU8(cp == nil ? 0 : 1)
            w.writeU64(cp ?? 0)
        case let .head(h):
            tag = .head
            w.writeU64(h.index)
            w.writeBytes(h.hash)
            w.writeU64(h.commitTimeNs)
        case let .entries(list):
            tag = .entries
            // `count:u32` then each entry as `index:u64 hash:32 entry:blob32` (`PackedEntries`).
            w.writeBytes(PackedEntries(list).bytes)
        case let .value(record):
            tag = .value
            Self.writeRecord(record, &w)
        case let .page(records, next):
            tag = .page
            w.writeU32(UInt32(records.count))
            for r in records {
                w.writeBlob32(r.key)
                Self.writeRecord(r.record, &w)
            }
            w.writeU8(next == nil ? 0 : 1)
            w.writeBlob32(next ?? [])
        case let .error(code, message):
            tag = .error
            w.writeU16(code)
            w.writeString16(message)
        case let .heartbeat(head, rootTime):
            tag = .heartbeat
            w.writeU64(head)
            w.writeU64(rootTime)
        case let .snapshotBegin(index, hash, size):
            tag = .snapshotBegin
            w.writeU64(index)
            w.writeBytes(hash)
            w.writeU64(size)
        case let .snapshotChunk(bytes):
            tag = .snapshotChunk
            w.writeBytes(bytes)
        case .snapshotEnd:
            tag = .snapshotEnd
        case let .snapshotStart(index, hash, size, offset):
            tag = .snapshotStart
            w.writeU64(index)
            w.writeBytes(hash)
            w.writeU64(size)
            w.writeU64(offset)
        case let .snapshotDone(digest):
            tag = .snapshotDone
            w.writeBytes(digest)
        case let .snapshotWaiting(queued):
            tag = .snapshotWaiting
            w.writeU32(queued)
        case let .digest(count, hash, last, more):
            tag = .digest
            w.writeU64(count)
            w.writeBytes(hash)
            w.writeBlob32(last)
            w.writeU8(more ? 1 : 0)
        case let .status(json):
            tag = .status
            w.writeBlob32(Array(json.utf8))
        }
        return Frame(type: tag.rawValue, payload: w.bytes)
    }

    /// `present:u8 [flags:u8 (bit0 expiry) [expiry:u64] value:blob32]`
    static func writeRecord(_ record: Record?, _ w: inout ByteWriter) {
        guard let record else {
            w.writeU8(0)
            return
        }
        w.writeU8(1)
        w.writeU8(record.expiry == nil ? 0 : 1)
        if let x = record.expiry { w.writeU64(x) }
        w.writeBlob32(record.value)
    }

    static func readRecord(_ r: inout ByteReader<[UInt8]>) throws -> Record? {
        guard try r.readU8("record presence") == 1 else { return nil }
        let flags = try r.readU8("record flags")
        let expiry = flags & 1 != 0 ? try r.readU64("expiry") : nil
        return Record(value: try r.readBlob32("value"), expiry: expiry)
    }

    /// An `entries` response read in place (`PackedEntries`: checked as `decode` checks it,
    /// the same errors), nil for any other response: a replica's catch-up applies the
    /// entries from the frame's bytes without an array per hash and entry.
    public static func packedEntries(_ frame: Frame) throws -> PackedEntries? {
        guard frame.type == Tag.entries.rawValue else { return nil }
        var r = ByteReader(frame.payload)
        let list = try PackedEntries.read(from: &r)
        try r.expectEnd("response")
        return list
    }

    /// The frame of an `entries` response holding `list` (the bytes `.entries(list.entries)`
    /// encodes to), written from the list's bytes as they are.
    public static func entriesFrame(_ list: PackedEntries) -> Frame {
        Frame(type: Tag.entries.rawValue, payload: Array(list.bytes))
    }

    public static func decode(_ frame: Frame) throws -> Response {
        guard let tag = Tag(rawValue: frame.type) else {
            throw DecodeError(offset: 4, reason: "unknown response type 0x\(hexString([frame.type]))")
        }
        // A snapshot chunk's payload is its bytes as they are: no copy.
        if tag == .snapshotChunk { return .snapshotChunk(frame.payload) }
        var r = ByteReader(frame.payload)
        let resp: Response
        switch tag {
        case .applied:
            let index = try r.readU64("log index")
            resp = .applied(logIndex: index == 0 ? nil : index, kept: try r.readU32("kept"), dropped: try r.readU32("dropped"))
        case .written:
            let index = try r.readU64("log index")
            let n = Int(try r.readU32("outcome count"))
            guard n <= r.remaining else { throw DecodeError(offset: r.offset - 4, reason: "outcome count \(n) too large") }
            var outcomes = [ConditionalWrite.Outcome]()
            outcomes.reserveCapacity(n)
            for _ in 0..<n { outcomes.append(try ConditionalWrite.Outcome.decode(from: &r)) }
            resp = .written(logIndex: index == 0 ? nil : index, outcomes: outcomes)
        case .conflict:
            resp = .conflict(current: try r.readU64("current position"))
        case .checkpoint:
            let present = try r.readU8("presence")
            let cp = try r.readU64("checkpoint")
            resp = .checkpoint(present == 1 ? cp : nil)
        case .head:
            resp = .head(Head(index: try r.readU64("index"), hash: try r.readBytes(32, "hash"), commitTimeNs: try r.readU64("commit time")))
        case .entries:
            resp = .entries(try PackedEntries.read(from: &r).entries)
        case .value:
            resp = .value(try readRecord(&r))
        case .page:
            let n = Int(try r.readU32("record count"))
            guard n <= r.remaining / 5 else { throw DecodeError(offset: r.offset - 4, reason: "record count \(n) too large") }
            var records = [ScanRecord]()
            for _ in 0..<n {
                let key = try r.readBlob32("key")
                guard let rec = try readRecord(&r) else { throw DecodeError(offset: r.offset, reason: "absent record in page") }
                records.append(ScanRecord(key: key, record: rec))
            }
            let more = try r.readU8("continuation flag")
            let next = try r.readBlob32("continuation")
            resp = .page(records: records, next: more == 1 ? next : nil)
        case .error:
            resp = .error(code: try r.readU16("error code"), message: try r.readString16("error message"))
        case .heartbeat:
            resp = .heartbeat(head: try r.readU64("head"), rootTimeNs: try r.readU64("root time"))
        case .snapshotBegin:
            resp = .snapshotBegin(index: try r.readU64("index"), hash: try r.readBytes(32, "hash"), size: try r.readU64("size"))
        case .snapshotChunk:
            resp = .snapshotChunk(try r.readBytes(r.remaining, "chunk"))
        case .snapshotEnd:
            resp = .snapshotEnd
        case .snapshotStart:
            resp = .snapshotStart(index: try r.readU64("index"), hash: try r.readBytes(32, "hash"), size: try r.readU64("size"),
                                  offset: try r.readU64("offset"))
        case .snapshotDone:
            resp = .snapshotDone(digest: try r.readBytes(16, "digest"))
        case .snapshotWaiting:
            resp = .snapshotWaiting(queued: try r.readU32("queued"))
        case .digest:
            resp = .digest(count: try r.readU64("count"), hash: try r.readBytes(32, "hash"), last: try r.readBlob32("last"),
                           more: try r.readU8("more") == 1)
        case .status:
            resp = .status(String(decoding: try r.readBlob32("status"), as: UTF8.self))
        }
        try r.expectEnd("response")
        return resp
    }
}
