import KTFormats
import QSModel

/// What qsrest answers over HTTP.
public struct RestReply: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: [UInt8]

    public init(status: Int, headers: [(String, String)] = [], body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// A TSV reply as KT encodes it (names in byte order, the column encoding it picks).
    static func fields(_ status: Int, _ map: [String: String]) -> RestReply {
        tsv(status, Dictionary(uniqueKeysWithValues: map.map { (Array($0.key.utf8), Array($0.value.utf8)) }))
    }

    static func tsv(_ status: Int, _ map: [[UInt8]: [UInt8]]) -> RestReply {
        let (type, body) = KTTSV.reply(map)
        return RestReply(status: status, headers: [("Content-Type", type)], body: body)
    }

    /// KT's `ERROR` reply. qsrest's own explanations (what failed, what to do) run past the
    /// 255 bytes beyond which KT's rule URL-encodes a column, which producers' logs and curl
    /// show as %-soup: printable, they go as they are (a TSV reader takes a column of any
    /// length; ukt decodes either).
    static func error(_ status: Int, _ message: String) -> RestReply {
        let bytes = Array(message.utf8)
        guard bytes.count > 255, !bytes.contains(where: { $0 < 0x20 || $0 == 0x7F }) else { return fields(status, ["ERROR": message]) }
        return RestReply(status: status, headers: [("Content-Type", KTTSV.contentType(nil))], body: Array("ERROR\t".utf8) + bytes + [0x0A])
    }

    /// A plain-text reply (REST and qsrest's own errors).
    static func text(_ status: Int, _ message: String, headers: [(String, String)] = []) -> RestReply {
        RestReply(status: status, headers: [("Content-Type", "text/plain")] + headers, body: Array((message + "\n").utf8))
    }
}

/// KT's error texts, as its server writes them.
enum KTErrorText {
    static let duplicate = "DB: 6: record duplication: record duplication"
    static let noRecord = "DB: 7: no record: no record"
    static let logic = "DB: 8: logical inconsistency: logical inconsistency"
    static let statusConflict = "DB: 8: logical inconsistency: status conflict"
    static let invalid = "invalid parameters"
    static let noSuchDatabase = "no such database"
}

/// One producer request turned into writes: the writes (full QS keys) and how to answer
/// once the batch holding them is committed. A request that needs no write (`void`,
/// `echo`, a refusal) is answered at once.
public enum KTWriteRequest: Sendable {
    case writes([ConditionalWrite], procedure: String, answer: @Sendable (WriteQueue.Answer) -> RestReply)
    case immediate(RestReply, procedure: String, bad: String?)
}

/// KT's HTTP RPC write procedures and RESTful PUT/DELETE, as qsrest takes them: the same
/// parameters (`key`, `value`, `xt`, `DB`, `_`-prefixed bulk records, column encodings)
/// and KT's status codes and error texts (`FakeKT` is the reference the tests compare with).
public struct KTWrites: Sendable {
    /// KT database index → QS key prefix (`--db-map`, as in qsktbridge).
    public let databases: [UInt16: [UInt8]]
    public let clock: @Sendable () -> Int64

    public init(databases: [UInt16: [UInt8]], clock: @escaping @Sendable () -> Int64 = { Int64(wallClockSeconds()) }) {
        self.databases = databases
        self.clock = clock
    }

    static let writeProcedures: Set<String> = ["set", "add", "replace", "append", "increment", "cas", "remove",
                                               "set_bulk", "remove_bulk"]
    static let refused: [String: String] = [
        "clear": "clear is refused by qsrest: it would wipe a keyspace; remove the keys one by one (remove_bulk)",
        "increment_double": "increment_double is not offered by qsrest; store the number with set",
        "seize": "seize is not offered by qsrest: it reads; read from a QS node, then remove",
    ]

    /// The prefix of the database a `DB` parameter (absent or empty: 0; a number) names.
    func prefix(_ db: [UInt8]?) -> [UInt8]? {
        guard let db, !db.isEmpty else { return databases[0] }
        guard db.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), db.count <= 5 else { return nil }
        let n = KTExpiration.parseInteger(db)
        guard n >= 0, n <= Int64(UInt16.max) else { return nil }
        return databases[UInt16(n)]
    }

    /// The absolute expiry for a KT `xt` parameter (nil: never).
    func expiry(_ xt: [UInt8]?) -> UInt64? {
        guard let xt else { return nil }
        let stored = KTExpiration.stored(requested: KTExpiration.parseInteger(xt), now: clock())
        return stored >= KTExpiration.never ? nil : UInt64(max(stored, 0))
    }

    public func rpc(_ name: String, _ p: KTRPCParameters) -> KTWriteRequest {
        switch name {
        case "void": return .immediate(.fields(200, [:]), procedure: name, bad: nil)
        case "echo": return .immediate(.tsv(200, p.values), procedure: name, bad: nil)
        default: break
        }
        if let why = Self.refused[name] { return .immediate(.error(501, why), procedure: name, bad: nil) }
        guard Self.writeProcedures.contains(name) else {
            let message = name.isEmpty ? "not implemented: " : "not implemented: \(name) (qsrest takes KT's write procedures; read from a QS node)"
            return .immediate(.error(501, message), procedure: "unknown", bad: "unknown procedure '\(name.prefix(64))'")
        }
        guard let base = prefix(p["DB"]) else {
            return .immediate(.error(400, KTErrorText.noSuchDatabase), procedure: name, bad: "no such database")
        }
        let xt = expiry(p["xt"])
        let invalid = KTWriteRequest.immediate(.error(400, KTErrorText.invalid), procedure: name, bad: "invalid parameters")
        switch name {
        case "set", "add", "replace", "append":
            guard let key = p["key"], let value = p["value"] else { return invalid }
            let kind: ConditionalWrite.Kind = name == "set" ? .set : name == "add" ? .add : name == "replace" ? .replace : .append
            let failure = name == "add" ? KTErrorText.duplicate : KTErrorText.noRecord
            return .writes([ConditionalWrite(kind, key: base + key, value: value, expiry: xt)], procedure: name) { a in
                Self.single(a, name) { Self.plain($0, failure: failure) }
            }
        case "increment":
            guard let key = p["key"], let n = p["num"] else { return invalid }
            let origin: Int64
            switch p["orig"].map({ String(decoding: $0, as: UTF8.self) }) {
            case nil: origin = 0
            case "try": origin = Int64.min
            case "set": origin = Int64.max
            case let s?: origin = KTExpiration.parseInteger(Array(s.utf8))
            }
            let w = ConditionalWrite(.increment(by: KTExpiration.parseInteger(n), origin: origin), key: base + key, expiry: xt)
            return .writes([w], procedure: name) { a in
                Self.single(a, name) { outcome in
                    if case let .number(v) = outcome { return .fields(200, ["num": "\(v)"]) }
                    return .error(450, KTErrorText.logic)
                }
            }
        case "cas":
            guard let key = p["key"] else { return invalid }
            let w = ConditionalWrite(.cas(old: p["oval"], remove: p["nval"] == nil), key: base + key, value: p["nval"] ?? [], expiry: xt)
            return .writes([w], procedure: name) { a in Self.single(a, name) { Self.plain($0, failure: KTErrorText.statusConflict) } }
        case "remove":
            guard let key = p["key"] else { return invalid }
            return .writes([ConditionalWrite(.remove, key: base + key)], procedure: name) { a in
                Self.single(a, name) { Self.plain($0, failure: KTErrorText.noRecord) }
            }
        case "set_bulk":
            let writes = p.records({ ConditionalWrite(.set, key: base + $0, value: $1, expiry: xt) }, by: Self.byKey)
            let count = writes.count
            return .writes(writes, procedure: name) { _ in .fields(200, ["num": "\(count)"]) }
        default: // remove_bulk
            let writes = p.records({ k, _ in ConditionalWrite(.remove, key: base + k) }, by: Self.byKey)
            return .writes(writes, procedure: name) { a in
                guard case let .committed(outcomes) = a else { return Self.unknownOutcome(name) }
                return .fields(200, ["num": "\(outcomes.filter { $0 == .done }.count)"])
            }
        }
    }

    /// A bulk request's writes in key order, as KT applies its records (their keys share
    /// the database's prefix).
    static func byKey(_ a: ConditionalWrite, _ b: ConditionalWrite) -> Bool { a.key.lexicographicallyPrecedes(b.key) }

    /// Success (200) when the write was done, else 450 with KT's `failure` text.
    static func plain(_ outcome: ConditionalWrite.Outcome, failure: String) -> RestReply {
        outcome == .done ? .fields(200, [:]) : .error(450, failure)
    }

    /// The answer to a one-write procedure from its outcome.
    static func single(_ a: WriteQueue.Answer, _ name: String, _ reply: (ConditionalWrite.Outcome) -> RestReply) -> RestReply {
        guard case let .committed(outcomes) = a, let o = outcomes.first else {
            return name == "set" || name == "append" ? .fields(200, [:]) : unknownOutcome(name)
        }
        return reply(o)
    }

    /// A conditional write committed whose outcome was lost with the root's answer.
    static func unknownOutcome(_ name: String) -> RestReply {
        .error(500, "\(name) was committed but the root's answer was lost, so its outcome is unknown: read the key before retrying")
    }

    /// RESTful `PUT /[DB/]KEY` (`X-Kt-Mode: set|add|replace`, `X-Kt-Xt`) and `DELETE`.
    public func rest(method: String, path: ArraySlice<UInt8>, body: [UInt8], mode: String?, xtHeader: String?) -> KTWriteRequest {
        var rest = path
        if rest.first == UInt8(ascii: "/") { rest = rest.dropFirst() }
        var base = databases[0]
        if let slash = rest.firstIndex(of: UInt8(ascii: "/")) {
            let dbExpr = KTColumnEncoding.urlDecode(rest[rest.startIndex..<slash])
            rest = rest[rest.index(after: slash)...]
            if rest.first == UInt8(ascii: "/") { rest = rest.dropFirst() }
            if !dbExpr.isEmpty { base = prefix(dbExpr) }
        }
        guard let base else { return .immediate(.text(400, KTErrorText.noSuchDatabase), procedure: "rest", bad: "REST: no such database") }
        let key = base + KTColumnEncoding.urlDecode(rest)
        switch method {
        case "PUT":
            var xt: UInt64?
            if let h = xtHeader, let t = KTHTTPDate.parse(h), t > 0, t < KTExpiration.never { xt = UInt64(t) }
            let kind: ConditionalWrite.Kind
            switch mode?.lowercased() {
            case "add": kind = .add
            case "replace": kind = .replace
            // KT takes any other mode (none, "set", a typo) as set.
            default: kind = .set
            }
            let failure = kind == .add ? KTErrorText.duplicate : KTErrorText.noRecord
            return .writes([ConditionalWrite(kind, key: key, value: body, expiry: xt)], procedure: "rest_put") { a in
                guard case let .committed(o) = a else {
                    return kind == .set ? RestReply(status: 201) : .text(500, "committed; outcome unknown: read the key before retrying")
                }
                return o.first == .done ? RestReply(status: 201) : RestReply(status: 450, headers: [("X-Kt-Error", failure)])
            }
        case "DELETE":
            return .writes([ConditionalWrite(.remove, key: key)], procedure: "rest_delete") { a in
                guard case let .committed(o) = a else { return .text(500, "committed; outcome unknown: read the key before retrying") }
                return o.first == .done ? RestReply(status: 204) : RestReply(status: 404, headers: [("X-Kt-Error", KTErrorText.noRecord)])
            }
        default:
            return .immediate(RestReply(status: 501), procedure: "unknown",
                              bad: "REST: \(method.prefix(10)) is not taken by qsrest (PUT and DELETE are; read from a QS node)")
        }
    }
}
