import Foundation
#if canImport(Glibc)
import Glibc
#endif
import KTFormats
import QSModel
import QSStore

/// A reply the read ports' budget has no room for now (`ReplyMemory`), found while it was
/// being gathered: `bytes` so far. Answered as the budget's refusal, never built whole.
struct KTReplyTooLarge: Error {
    let bytes: Int
    let kind: String
}

/// KT's RPC read procedures over a QS store, each in one read transaction (on the store's
/// reader threads). Replies are KT's: a TSV map in the encoding KT would pick, status
/// 200/400/450/501.
struct KTProcedures: Sendable {
    let databases: KTDatabaseMap
    let clock: ReadClock
    let limits: ScanLimits
    let started: Date
    let connections: @Sendable () -> Int
    /// Whether a reply of so many bytes and values may be gathered now
    /// (`ReplyMemory.admitsGathered`): `get_bulk` asks as it gathers values, and stops at the
    /// first that would not fit.
    var replyFits: @Sendable (_ bytes: Int, _ values: Int) -> Bool = { _, _ in true }

    /// KT procedures that write: refused on a read-only node (501, like any procedure this
    /// server does not implement).
    static let writes: Set<String> = [
        "set", "add", "replace", "append", "increment", "increment_double", "cas", "remove", "seize",
        "set_bulk", "remove_bulk", "clear", "synchronize", "vacuum", "tune_replication", "ulog_remove",
        "play_script", "cur_set_value", "cur_remove", "cur_seize",
    ]
    static let reads: Set<String> = ["void", "echo", "report", "status", "get", "check", "get_bulk",
                                     "match_prefix", "match_regex"]

    func call(_ name: String, _ params: KTRPCParameters, in txn: borrowing StoreTransaction) throws -> KTReply {
        guard Self.reads.contains(name) else {
            let message = "not implemented: \(name)"
            if Self.writes.contains(name) {
                return reply(501, ["ERROR": "\(message) (\(KTMessages.readOnly))"], kind: "write", refusedWrite: name)
            }
            return reply(501, ["ERROR": message], kind: "unknown", bad: "unknown procedure '\(name.prefix(64))'")
        }
        switch name {
        case "void": return reply(200, [:], kind: name)
        case "echo": return KTReply(map: params.values, status: 200, kind: name)
        case "report": return try report(txn)
        default: break
        }
        guard let db = databases.database(forParameter: params["DB"]) else {
            return reply(400, ["ERROR": KTMessages.noSuchDatabase], kind: name, bad: "no such database")
        }
        let now = clock()
        switch name {
        case "status":
            let (count, size) = try totals(db, txn)
            return reply(200, ["count": "\(count)", "size": "\(size)"], kind: name)
        case "get", "check":
            guard let key = params["key"] else { return invalid(name) }
            guard let record = try lookup(db, key, now: now, txn) else { return reply(450, ["ERROR": KTMessages.noRecord], kind: name) }
            var out: [[UInt8]: [UInt8]] = [:]
            if name == "get" { out[Array("value".utf8)] = record.value } else { out[Array("vsiz".utf8)] = Array("\(record.value.count)".utf8) }
            if let xt = record.expiry, xt < UInt64(KTExpiration.never) { out[Array("xt".utf8)] = Array("\(xt)".utf8) }
            return KTReply(map: out, status: 200, kind: name)
        case "get_bulk":
            var out: [[UInt8]: [UInt8]] = [:]
            var found = 0, bytes = 0
            for (k, _) in params.values where k.first == UInt8(ascii: "_") {
                if let record = try lookup(db, Array(k.dropFirst()), now: now, txn) {
                    // The reply's size so far, checked before the value is kept: many large
                    // values named in one small request were all gathered (and encoded)
                    // before the reply budget was asked.
                    bytes += k.count + record.value.count + 2
                    guard replyFits(bytes, found + 1) else { throw KTReplyTooLarge(bytes: bytes, kind: name) }
                    out[k] = record.value
                    found += 1
                }
            }
            out[Array("num".utf8)] = Array("\(found)".utf8)
            return KTReply(map: out, status: 200, kind: name)
        case "match_prefix":
            guard let prefix = params["prefix"] else { return invalid(name) }
            return try match(db, prefix: prefix, max: params["max"], now: now, kind: name, txn) { _ in true }
        default: // match_regex
            guard let pattern = params["regex"] else { return invalid(name) }
            guard let regex = POSIXRegex(pattern) else {
                return reply(450, ["ERROR": "DB: 8: logical inconsistency: compilation failed"], kind: name,
                             bad: "invalid regular expression")
            }
            return try match(db, prefix: [], max: params["max"], now: now, kind: name, txn) { regex.matches($0) }
        }
    }

    /// A live record of `db` under its KT key, nil when missing or expired.
    private func lookup(_ db: KTDatabaseMap.Database, _ key: [UInt8], now: UInt64,
                        _ txn: borrowing StoreTransaction) throws -> Record? {
        let full = db.prefix + key
        guard databases.owns(db, key: full), let r = try txn.get(full), !r.isExpired(at: now) else { return nil }
        return r
    }

    /// match_prefix / match_regex: `_KEY` → ordinal, and `num`. Keys are listed in key order;
    /// `max` (when given and not negative) and `limits.maxResults` cap the list.
    private func match(_ db: KTDatabaseMap.Database, prefix: [UInt8], max: [UInt8]?, now: UInt64, kind: String,
                       _ txn: borrowing StoreTransaction, _ accept: ([UInt8]) -> Bool) throws -> KTReply {
        var cap = limits.maxResults
        if let max {
            let m = KTExpiration.parseInteger(max)
            if m >= 0 { cap = Swift.min(cap, Int(clamping: m)) }
        }
        var out: [[UInt8]: [UInt8]] = [:]
        var n = 0
        if cap > 0 {
            try txn.forEachRecord(prefix: db.prefix + prefix, now: now, pageSize: limits.pageSize) { full, _ in
                guard databases.owns(db, key: full) else { return true }
                let key = Array(full.dropFirst(db.prefix.count))
                guard accept(key) else { return true }
                out[[UInt8(ascii: "_")] + key] = Array("\(n)".utf8)
                n += 1
                return n < cap
            }
        }
        out[Array("num".utf8)] = Array("\(n)".utf8)
        return KTReply(map: out, status: 200, kind: kind)
    }

    /// Records of `db` and their bytes (keys and values). Expired records not yet removed
    /// count, as they do in KT until its vacuum expunges them.
    private func totals(_ db: KTDatabaseMap.Database, _ txn: borrowing StoreTransaction) throws -> (count: Int, size: Int) {
        var count = 0, size = 0
        try txn.forEachRecord(prefix: db.prefix, now: nil, pageSize: limits.pageSize) { full, record in
            if databases.owns(db, key: full) {
                count += 1
                size += full.count - db.prefix.count + record.value.count
            }
            return true
        }
        return (count, size)
    }

    private func report(_ txn: borrowing StoreTransaction) throws -> KTReply {
        var out = [String: String]()
        var totalCount = 0, totalSize = 0
        for db in databases.databases {
            let (c, s) = try totals(db, txn)
            out["db_\(db.index)"] = "count=\(c) size=\(s) path=\(db.name ?? String(decoding: db.prefix, as: UTF8.self))"
            totalCount += c
            totalSize += s
        }
        out["db_total_count"] = "\(totalCount)"
        out["db_total_size"] = "\(totalSize)"
        let now = Date()
        out["serv_current_time"] = String(format: "%.6f", now.timeIntervalSince1970)
        out["serv_running_term"] = String(format: "%.6f", now.timeIntervalSince(started))
        out["serv_proc_id"] = "\(ProcessInfo.processInfo.processIdentifier)"
        out["serv_conn_count"] = "\(connections())"
        out["conf_kt_version"] = "quicksilver (KT 0.9.56 read interface)"
        return reply(200, out, kind: "report")
    }

    private func invalid(_ name: String) -> KTReply {
        reply(400, ["ERROR": KTMessages.invalidParameters], kind: name, bad: "\(name): invalid parameters")
    }

    private func reply(_ status: Int, _ map: [String: String], kind: String, bad: String? = nil,
                       refusedWrite: String? = nil) -> KTReply {
        var m = [[UInt8]: [UInt8]]()
        for (k, v) in map { m[Array(k.utf8)] = Array(v.utf8) }
        var r = KTReply(map: m, status: status, kind: kind)
        r.badReason = bad
        r.refusedWrite = refusedWrite
        return r
    }
}

extension KTReply {
    /// A TSV reply as KT encodes it: names in byte order, the column encoding it picks.
    init(map: [[UInt8]: [UInt8]], status: Int, kind: String) {
        let (type, body) = KTTSV.reply(map)
        self.init(status: status, headers: [("Content-Type", type)], body: body, kind: kind)
    }
}

/// A POSIX extended regular expression, as KT's `match_regex` takes it (`kc::Regex`:
/// `regcomp` with `REG_EXTENDED | REG_NOSUB`, a key matched up to its first NUL byte).
/// glibc's matcher follows sets of states instead of backtracking, so a pattern such as
/// `(a+)+$` costs a key's length times the pattern's, not an exponential time: a read
/// client cannot hold the node's reader threads with one request (an ICU expression took
/// 12 s of CPU for it on one key).
final class POSIXRegex {
    private var compiled = regex_t()

    init?(_ pattern: [UInt8]) {
        guard !pattern.contains(0) else { return nil }
        let status = (pattern + [0]).withUnsafeBufferPointer { p in
            p.baseAddress!.withMemoryRebound(to: CChar.self, capacity: p.count) { regcomp(&compiled, $0, REG_EXTENDED | REG_NOSUB) }
        }
        guard status == 0 else { return nil }
    }

    deinit { regfree(&compiled) }

    func matches(_ key: [UInt8]) -> Bool {
        let end = key.firstIndex(of: 0) ?? key.count
        return (Array(key[..<end]) + [0]).withUnsafeBufferPointer { p in
            p.baseAddress!.withMemoryRebound(to: CChar.self, capacity: p.count) { regexec(&compiled, $0, 0, nil, 0) == 0 }
        }
    }
}
