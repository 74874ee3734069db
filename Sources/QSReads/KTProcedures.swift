import Foundation
#if canImport(Glibc)
import Glibc
#endif
import KTFormats
import QSModel
import QSNet
import QSStore

/// A reply the read ports' budget has no room for now (`ReplyMemory`), found while it was
/// being gathered: `bytes` so far. Answered as the budget's refusal, never built whole.
struct KTReplyTooLarge: Error {
    let bytes: Int
    let kind: String
}

/// A reply that would grow past what is answered on an event loop
/// (`KTProcedures.inlineReplyLimit`), found while it was gathered (nothing held): the
/// request is to be answered off the loops.
struct KTReplyNotInline: Error {}

/// KT's RPC read procedures over a QS store, each in one read transaction (on the store's
/// reader threads). Replies are KT's: a TSV map in the encoding KT would pick, status
/// 200/400/450/501.
struct KTProcedures: Sendable {
    let databases: KTDatabaseMap
    let clock: ReadClock
    let limits: ScanLimits
    let started: Date
    let connections: @Sendable () -> Int
    /// The read ports' reply budget: `get_bulk` holds its reply against it as it gathers
    /// values (`GatheredReply`), and stops at the first that would not fit; the hold goes
    /// with the reply (`KTReply.held`) to whoever writes it.
    var replyMemory = ReplyMemory(limit: .max)
    /// Set where requests are answered inline on an event loop: a `get_bulk` whose reply
    /// would grow past it throws `KTReplyNotInline` (many large values gathered inline held
    /// both loops for seconds).
    var inlineReplyLimit: Int?

    /// Whether the request's client is gone (its connection closed): scans stop between
    /// pages (`KTRequestAbandoned`).
    var abandoned: @Sendable () -> Bool = { false }

    /// These procedures as answered inline on an event loop.
    var inline: KTProcedures {
        var p = self
        p.inlineReplyLimit = ReplyMemory.largeReply
        return p
    }

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
            var reply = GatheredReply(memory: replyMemory)
            do {
                for (k, _) in params.values where k.first == UInt8(ascii: "_") {
                    guard let record = try lookup(db, Array(k.dropFirst()), now: now, txn) else { continue }
                    // The reply grown by this value, asked of the budget (and held) before
                    // the value is kept: many large values named in one small request were
                    // all gathered (and encoded) before the budget was asked, and requests
                    // gathering at once each saw none of the others'.
                    // (As many bytes as its key and value can take encoded: the reply's
                    // encoding is known only once every value is in.)
                    let n = k.withUnsafeBytes { KTColumnEncoding.mostEncodedCount($0) }
                        + record.value.withUnsafeBytes { KTColumnEncoding.mostEncodedCount($0) } + 2
                    if let limit = inlineReplyLimit, reply.bytes + n > limit { throw KTReplyNotInline() }
                    guard reply.add(n) else { throw KTReplyTooLarge(bytes: reply.bytes + n, kind: name) }
                    out[k] = record.value
                }
            } catch {
                reply.release()
                throw error
            }
            out[Array("num".utf8)] = Array("\(reply.values)".utf8)
            var r = KTReply(map: out, status: 200, kind: name)
            r.held = reply.held
            return r
        case "match_prefix":
            guard let prefix = params["prefix"] else { return invalid(name) }
            return try match(db, prefix: prefix, max: params["max"], now: now, kind: name, txn) { _ in true }
        default: // match_regex
            guard let pattern = params["regex"] else { return invalid(name) }
            if let why = POSIXRegex.refusal(pattern) {
                return reply(450, ["ERROR": "DB: 8: logical inconsistency: compilation failed (refused: \(why))"], kind: name,
                             bad: "regular expression refused: \(why)")
            }
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
            try txn.forEachRecord(prefix: db.prefix + prefix, now: now, pageSize: limits.pageSize, abandoned: abandoned) { full, _ in
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
        try txn.forEachRecord(prefix: db.prefix, now: nil, pageSize: limits.pageSize, abandoned: abandoned) { full, record in
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
        let (type, body) = KTTSV.replyBuffer(map)
        self.init(status: status, headers: [("Content-Type", type)], buffer: body, kind: kind)
    }
}

/// A POSIX extended regular expression, as KT's `match_regex` takes it (`kc::Regex`:
/// `regcomp` with `REG_EXTENDED | REG_NOSUB`, a key matched up to its first NUL byte).
/// glibc's matcher follows sets of states instead of backtracking, so a pattern such as
/// `(a+)+$` costs a key's length times the pattern's, not an exponential time: a read
/// client cannot hold the node's reader threads with one request (an ICU expression took
/// 12 s of CPU for it on one key).
///
/// Two things glibc allows cost without bound, and are refused before `regcomp`
/// (`refusal`): a bounded repetition is compiled as that many copies, in memory that grows
/// with the square of the bound (two 90-byte requests of `a{1,20000}` took a node to 8 GB),
/// and a back-reference needs backtracking (`(.*)…\1` held both scan slots for 80 s).
final class POSIXRegex {
    private var compiled = regex_t()

    /// The most a pattern may be: bytes, one repetition's bound, and the atoms it stands for
    /// once every bounded repetition is counted as that many copies (nested ones multiply).
    static let maxPatternBytes = 1024
    static let maxBound = 255
    static let maxExpandedAtoms = 1024

    /// Why `pattern` is refused before it is compiled, nil when it is not: longer than
    /// `maxPatternBytes`, a back-reference, a repetition bound over `maxBound`, or more than
    /// `maxExpandedAtoms` atoms once repetitions are expanded.
    static func refusal(_ pattern: [UInt8]) -> String? {
        guard pattern.count <= maxPatternBytes else { return "a pattern longer than \(maxPatternBytes) bytes" }
        // Atoms of each open group's current branch and of its finished branches; the
        // last atom (or group) of the current branch, for a quantifier to multiply.
        var stack: [(total: Int, branch: Int, last: Int)] = [(0, 0, 0)]
        var i = 0
        func add(_ n: Int) {
            stack[stack.count - 1].branch += n
            stack[stack.count - 1].last = n
        }
        while i < pattern.count {
            let c = pattern[i]
            switch c {
            case UInt8(ascii: "\\"):
                if i + 1 < pattern.count, (UInt8(ascii: "1")...UInt8(ascii: "9")).contains(pattern[i + 1]) {
                    return "a back-reference (\\\(Character(UnicodeScalar(pattern[i + 1]))))"
                }
                i += 2
                add(1)
                continue
            case UInt8(ascii: "["):
                // A bracket expression is one atom: skip to its closing `]` (one right
                // after `[` or `[^` is a member, as are `[:…:]`, `[=…=]`, `[.….]`).
                var j = i + 1
                if j < pattern.count, pattern[j] == UInt8(ascii: "^") { j += 1 }
                if j < pattern.count, pattern[j] == UInt8(ascii: "]") { j += 1 }
                while j < pattern.count, pattern[j] != UInt8(ascii: "]") {
                    if pattern[j] == UInt8(ascii: "["), j + 1 < pattern.count, [UInt8(ascii: ":"), UInt8(ascii: "="), UInt8(ascii: ".")].contains(pattern[j + 1]) {
                        let close = pattern[j + 1]
                        j += 2
                        while j + 1 < pattern.count, !(pattern[j] == close && pattern[j + 1] == UInt8(ascii: "]")) { j += 1 }
                        j += 2
                    } else {
                        j += 1
                    }
                }
                i = j + 1
                add(1)
                continue
            case UInt8(ascii: "("):
                stack.append((0, 0, 0))
            case UInt8(ascii: ")") where stack.count > 1:
                let group = stack.removeLast()
                add(group.total + group.branch)
            case UInt8(ascii: "|"):
                stack[stack.count - 1].total += stack[stack.count - 1].branch
                stack[stack.count - 1].branch = 0
                stack[stack.count - 1].last = 0
            case UInt8(ascii: "{"):
                // `{n}`, `{n,}`, `{n,m}`: the last atom counted as that many copies.
                var j = i + 1, bounds = [Int](), n = 0, digits = 0
                while j < pattern.count, pattern[j] != UInt8(ascii: "}") {
                    let d = pattern[j]
                    if d == UInt8(ascii: ",") {
                        bounds.append(digits > 0 ? n : 0)
                        n = 0
                        digits = 0
                    } else if (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(d) {
                        n = min(n * 10 + Int(d - 0x30), 1 << 20)
                        digits += 1
                    } else {
                        break
                    }
                    j += 1
                }
                guard j < pattern.count, pattern[j] == UInt8(ascii: "}") else { add(1); break }
                if digits > 0 { bounds.append(n) }
                let bound = bounds.max() ?? 0
                if bound > maxBound { return "a repetition bound of \(bound), over \(maxBound)" }
                let last = stack[stack.count - 1].last
                // `{n,}` is n copies and a star: one more.
                let copies = max(bound, 1) + (bounds.count == 1 && pattern[j - 1] == UInt8(ascii: ",") ? 1 : 0)
                stack[stack.count - 1].branch += last * (copies - 1)
                stack[stack.count - 1].last = last * copies
                i = j + 1
                continue
            case UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "?"), UInt8(ascii: "^"), UInt8(ascii: "$"):
                break
            default:
                add(1)
            }
            let expanded = stack.reduce(0) { $0 + $1.total + $1.branch }
            if expanded > maxExpandedAtoms { return "more than \(maxExpandedAtoms) atoms once its repetitions are expanded" }
            i += 1
        }
        let expanded = stack.reduce(0) { $0 + $1.total + $1.branch }
        if expanded > maxExpandedAtoms { return "more than \(maxExpandedAtoms) atoms once its repetitions are expanded" }
        return nil
    }

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
