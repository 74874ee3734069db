import Logging
import Metrics
import NIOCore
import QSModel
import QSNet
import QSStore

/// Answers the memcached commands of every connection of one server, on the connection's
/// event loop: a `get` line is answered in place (its keys read from the request's bytes),
/// in one read transaction per `get` — the event loop's, kept and renewed
/// (`Store.readInline(in:)`, `ReadSlot`) — and its reply is written straight from LMDB's map
/// into the connection's output buffer.
///
/// Reading inline is safe on an event loop because it is bounded and never waits: one `get`
/// is at most one command line of keys (8 KiB by default), each an LMDB B-tree lookup in a
/// read transaction, and LMDB readers never wait for the writer, a snapshot copy or log
/// trimming (they read the last committed pages through the memory map). The only stall
/// is a page fault on a cold page — the same a reader thread would take, minus two thread
/// hops per request. Nothing here allocates per key: the value is copied from LMDB's map
/// into the output buffer, counters are resolved once, numbers are written as ASCII digits.
struct MemcachedSession: Sendable {
    let config: MemcachedServer.Configuration
    let store: Store
    let metrics: ReadMetrics
    let logger: Logger
    let stats: MemcachedStats
    /// The database `get` reads and whether a key in it may also belong to a database with
    /// a longer prefix (then each key is checked, as `KTDatabaseMap.owns` says).
    let database: KTDatabaseMap.Database?
    let sharesPrefix: Bool
    let counters: Counters

    /// `qs_memcached_requests_total{command}`, one counter per command, resolved once.
    struct Counters: Sendable {
        let get, gets, version, stats, quit, write, bad: Counter
        init(_ metrics: ReadMetrics) {
            get = metrics.requests("get")
            gets = metrics.requests("gets")
            version = metrics.requests("version")
            stats = metrics.requests("stats")
            quit = metrics.requests("quit")
            write = metrics.requests("write")
            bad = metrics.requests("bad")
        }
    }

    static let readOnlyReply = "SERVER_ERROR read-only: write through the QS root\r\n"

    init(config: MemcachedServer.Configuration, store: Store, metrics: ReadMetrics, logger: Logger, stats: MemcachedStats) {
        self.config = config
        self.store = store
        self.metrics = metrics
        self.logger = logger
        self.stats = stats
        let db = config.databases.database(index: config.database)
        database = db
        sharesPrefix = db.map { db in
            config.databases.databases.contains { $0.prefix.count > db.prefix.count && $0.prefix.starts(with: db.prefix) }
        } ?? false
        counters = Counters(metrics)
    }

    /// Answers one command into `out`; false when the connection is to be closed after it.
    /// `held`: what `out`'s replies hold of the reply budget (`answer(get:)`).
    func answer(_ command: MemcachedCommand, into out: inout ByteBuffer, held: inout Int, peer: String, slot: ReadSlot) -> Bool {
        switch command {
        case let .get(keys, withCAS):
            // Commands arrive here from `MemcachedDecoder`'s callers; the server answers
            // `get` lines in place (`answer(get:)`), the one implementation.
            var line = Array((withCAS ? "gets" : "get").utf8)
            for key in keys { line.append(0x20); line += key }
            line.withUnsafeBytes { bytes in
                if let get = MemcachedLineParser.Get(bytes) { answer(get: get, into: &out, held: &held, peer: peer, slot: slot) }
            }
        case .version:
            counters.version.increment()
            out.writeString("VERSION ")
            out.writeString(config.version)
            out.writeString("\r\n")
        case .stats:
            counters.stats.increment()
            out.writeString(stats.render(version: config.version, connections: metrics.active.count))
        case .quit:
            counters.quit.increment()
            return false
        case let .write(name, noreply):
            counters.write.increment()
            metrics.refusedWrite(logger, peer: peer, write: noreply ? "\(name) noreply" : name)
            if !noreply { out.writeString(Self.readOnlyReply) }
        case let .malformed(reply, reason, close):
            counters.bad.increment()
            metrics.bad(logger, peer: peer, reason: reason, ["reply": "\(reply)"])
            out.writeString(reply)
            out.writeString("\r\n")
            return !close
        }
        return true
    }

    /// Answers one command line (without its line ending) into `out`: a `get` in place,
    /// anything else through `MemcachedLineParser`; returns whether the connection stays
    /// open and how many data bytes (of a refused storage command) follow the line.
    func answer(line: UnsafeRawBufferPointer, into out: inout ByteBuffer, held: inout Int, peer: String, slot: ReadSlot) -> (open: Bool, skip: Int) {
        if let get = MemcachedLineParser.Get(line), get.refusal(config.limits) == nil {
            answer(get: get, into: &out, held: &held, peer: peer, slot: slot)
            return (true, 0)
        }
        let (command, skip) = MemcachedLineParser.parse(line, limits: config.limits)
        return (answer(command, into: &out, held: &held, peer: peer, slot: slot), skip)
    }

    /// `get`/`gets`: every key read in one read transaction (the event loop's `slot`), each
    /// value written from LMDB's map straight into `out`, then `END`. A large reply is held
    /// against the reply budget as it is built (the check and the hold in one step), and
    /// the hold added to `held`, what `out`'s replies hold: whoever writes `out` takes it on
    /// (`writeReplies`, the threads' `pendingOut`) without giving it back in between.
    func answer(get: MemcachedLineParser.Get, into out: inout ByteBuffer, held: inout Int, peer: String, slot: ReadSlot) {
        (get.withCAS ? counters.gets : counters.get).increment()
        guard let db = database else {
            out.writeString("SERVER_ERROR no such database\r\n")
            return
        }
        let now = config.clock()
        let withCAS = get.withCAS, format = config.valueFormat
        // Written after the last key, or dropped for a storage error.
        let start = out.writerIndex
        let maxReply = config.limits.maxReplyBytes, memory = config.replyMemory
        var hits = 0, asked = 0
        // What this reply holds of the budget so far (0 until it is large).
        var mine = 0
        do {
            try store.readInline(in: slot) { txn in
                try get.forEachKey { key in
                    asked += 1
                    try lookup(key, in: db, txn) { record in
                        guard let record, !record.isExpired(at: now) else { return }
                        hits += 1
                        // The reply so far with this value: many values under 64 KiB make
                        // a large reply too, and several values only while the budget has
                        // room for all of them. Held before it is built, so replies built at
                        // once on other threads see it (checked only, each could pass).
                        let reply = out.writerIndex - start + record.value.count
                        if reply >= ReplyMemory.largeReply {
                            guard memory.tryHoldGathered(reply - mine, values: hits) else { throw ReplyMemoryFull(bytes: reply) }
                            mine = reply
                        }
                        Self.writeValue(key: key, record: record, withCAS: withCAS, format: format, into: &out)
                        if hits > 1, out.writerIndex - start > maxReply { throw ReplyTooLarge() }
                    }
                }
            }
        } catch is ReplyTooLarge {
            memory.release(mine)
            out.moveWriterIndex(to: start)
            metrics.bad(logger, peer: peer, reason: "get reply over \(maxReply) bytes (\(asked) keys read, \(hits) found)")
            out.writeString("SERVER_ERROR out of memory writing get response\r\n")
            return
        } catch let full as ReplyMemoryFull {
            memory.release(mine)
            out.moveWriterIndex(to: start)
            metrics.refusedForMemory(logger, peer: peer, bytes: full.bytes, memory: memory)
            out.writeString("SERVER_ERROR out of memory writing get response\r\n")
            return
        } catch {
            memory.release(mine)
            out.moveWriterIndex(to: start)
            metrics.readFailed(logger, "memcached get failed", metadata: ["peer": "\(peer)", "error": "\(error)"])
            out.writeString("SERVER_ERROR storage error\r\n")
            return
        }
        if hits > 0 { metrics.hits.increment(by: Int64(hits)) }
        if hits < asked { metrics.misses.increment(by: Int64(asked - hits)) }
        stats.count(gets: asked, hits: hits)
        held += mine
        out.writeString("END\r\n")
    }

    /// The record of `key` in database `db` (its prefix in front), nil when there is none
    /// or it belongs to a database with a longer prefix.
    @inline(__always)
    private func lookup(_ key: UnsafeRawBufferPointer, in db: KTDatabaseMap.Database, _ txn: borrowing StoreTransaction,
                        _ body: (RecordView?) throws -> Void) throws {
        if db.prefix.isEmpty && !sharesPrefix { return try txn.withRecord(bytes: key, body) }
        // The stored key (prefix, then key) on the stack: nothing allocated per key.
        try withUnsafeTemporaryAllocation(byteCount: db.prefix.count + key.count, alignment: 1) { buf in
            db.prefix.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: buf[..<db.prefix.count]).copyMemory(from: $0) }
            UnsafeMutableRawBufferPointer(rebasing: buf[db.prefix.count...]).copyMemory(from: key)
            let full = UnsafeRawBufferPointer(buf)
            if sharesPrefix && !config.databases.owns(db, key: full) { return }
            try txn.withRecord(bytes: full, body)
        }
    }

    /// `VALUE <key> <flags> <bytes>[ <cas unique>]\r\n<data>\r\n`, written in one piece: its
    /// length is known before, so it takes one capacity check and one copy per part (each
    /// `ByteBuffer.write…` call costs about a hundred instructions of its own).
    static func writeValue(key: UnsafeRawBufferPointer, record: RecordView, withCAS: Bool, format: MemcachedValueFormat,
                           into out: inout ByteBuffer) {
        let (flags, data) = format.split(record.value)
        let cas = withCAS ? MemcachedValueFormat.casUnique(value: record.value, expiry: record.expiry) : 0
        let length = 6 + key.count + 1 + DecimalASCII.digits(UInt64(flags)) + 1 + DecimalASCII.digits(UInt64(data.count))
            + (withCAS ? 1 + DecimalASCII.digits(cas) : 0) + 2 + data.count + 2
        out.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { buffer in
            guard let base = buffer.baseAddress else { return 0 }
            var at = base
            @inline(__always) func put(_ bytes: UnsafeRawBufferPointer) {
                if let from = bytes.baseAddress, bytes.count > 0 { at.copyMemory(from: from, byteCount: bytes.count) }
                at += bytes.count
            }
            @inline(__always) func put(_ byte: UInt8) {
                at.storeBytes(of: byte, as: UInt8.self)
                at += 1
            }
            @inline(__always) func put(decimal n: UInt64) {
                at += storeDecimal(n, at: at)
            }
            put(UInt8(ascii: "V")); put(UInt8(ascii: "A")); put(UInt8(ascii: "L")); put(UInt8(ascii: "U")); put(UInt8(ascii: "E"))
            put(UInt8(ascii: " "))
            put(key)
            put(UInt8(ascii: " "))
            put(decimal: UInt64(flags))
            put(UInt8(ascii: " "))
            put(decimal: UInt64(data.count))
            if withCAS {
                put(UInt8(ascii: " "))
                put(decimal: cas)
            }
            put(UInt8(ascii: "\r")); put(UInt8(ascii: "\n"))
            put(UnsafeRawBufferPointer(rebasing: data))
            put(UInt8(ascii: "\r")); put(UInt8(ascii: "\n"))
            return base.distance(to: at)
        }
    }

}

/// A multi-key `get` whose reply passed `MemcachedLimits.maxReplyBytes`.
struct ReplyTooLarge: Error {}

/// A `get` whose large values the read ports' reply budget has no room for now (`ReplyMemory`).
struct ReplyMemoryFull: Error {
    let bytes: Int
}
