import Foundation
import KTFormats

/// The outcome of one RPC call: KT's status code and reply map.
struct RPCResult {
    var status: Int
    var out: [[UInt8]: [UInt8]] = [:]

    static let success = RPCResult(status: 200)

    static func error(_ status: Int, _ message: String) -> RPCResult {
        RPCResult(status: status, out: [Array("ERROR".utf8): Array(message.utf8)])
    }

    static let invalidParameters = RPCResult.error(400, "invalid parameters")
    static let noSuchDatabase = RPCResult.error(400, "no such database")
    static let noSuchCursor = RPCResult.error(400, "no such cursor")

    /// A database error, with the status KT gives it for this procedure.
    static func db(_ e: KTDBError, expected: Set<Int>) -> RPCResult {
        let status: Int
        if e.code == 1 { status = 501 } else if expected.contains(e.code) { status = 450 } else { status = 500 }
        return .error(status, e.text)
    }
}

/// RPC parameters: a map from name to value, as KT builds it.
struct RPCParams {
    var map: [[UInt8]: [UInt8]]

    subscript(_ name: String) -> [UInt8]? { map[Array(name.utf8)] }
    func has(_ name: String) -> Bool { map[Array(name.utf8)] != nil }
    func string(_ name: String) -> String? { self[name].map { String(decoding: $0, as: UTF8.self) } }
    func int(_ name: String) -> Int64? { self[name].map { KTExpiration.parseInteger($0) } }

    /// Entries whose name starts with `_`, the prefix stripped.
    var underscored: [(key: [UInt8], value: [UInt8])] {
        map.compactMap { k, v in k.first == UInt8(ascii: "_") ? (Array(k.dropFirst()), v) : nil }
            .sorted { $0.key.lexicographicallyPrecedes($1.key) }
    }
}

extension FakeKTCore {
    /// Runs one RPC procedure for connection `connection`.
    func rpc(_ name: String, _ params: RPCParams, connection: UInt64) -> RPCResult {
        requestCounter.increment()
        return withStore { store in
            let dbIndex = store.databaseIndex(params["DB"])
            var cursorID: CursorID? = nil
            if let cur = params["CUR"], let first = cur.first, first >= 0x30, first <= 0x39 {
                let id = CursorID(connection: connection, number: KTExpiration.parseInteger(cur))
                if store.cursors[id] == nil {
                    if let dbIndex { store.cursors[id] = Cursor(db: dbIndex, key: nil) }
                } else if name == "cur_delete" {
                    store.cursors[id] = nil
                    return .success
                }
                if store.cursors[id] != nil { cursorID = id }
            }
            if name.hasPrefix("cur_") {
                // KT has no handler for cur_delete of a cursor it did not have.
                if name == "cur_delete" { return .error(501, "not implemented: \(name)") }
                guard let cursorID else { return .noSuchCursor }
                return cursorProcedure(name, params, &store, cursorID)
            }
            switch name {
            case "void": return .success
            case "echo": return RPCResult(status: 200, out: params.map)
            case "report": return report(&store)
            case "play_script": return playScript(params)
            case "tune_replication": return .error(501, "the RTS file is not set")
            case "ulog_list": return ulogList()
            case "ulog_remove": return ulogRemove(params)
            default: break
            }
            let known: Set<String> = ["status", "clear", "synchronize", "set", "add", "replace", "append", "increment",
                                      "increment_double", "cas", "remove", "get", "check", "seize", "set_bulk",
                                      "remove_bulk", "get_bulk", "vacuum", "match_prefix", "match_regex", "match_similar"]
            guard known.contains(name) else { return .error(501, "not implemented: \(name)") }
            guard let db = dbIndex else { return .noSuchDatabase }
            return databaseProcedure(name, params, &store, db)
        }
    }

    private func databaseProcedure(_ name: String, _ p: RPCParams, _ store: inout Store, _ db: Int) -> RPCResult {
        let xt: Int64? = p.int("xt")
        func num(_ v: Int64) -> [[UInt8]: [UInt8]] { [Array("num".utf8): Array(String(v).utf8)] }
        switch name {
        case "status": return status(&store, db)
        case "clear":
            store.clear(db: db)
            return .success
        case "synchronize", "vacuum": return .success
        case "set", "add", "replace", "append":
            guard let key = p["key"], let value = p["value"] else { return .invalidParameters }
            do {
                switch name {
                case "set": store.set(db: db, key: key, value: value, xt: xt)
                case "add": try store.add(db: db, key: key, value: value, xt: xt)
                case "replace": try store.replace(db: db, key: key, value: value, xt: xt)
                default: store.append(db: db, key: key, value: value, xt: xt)
                }
                return .success
            } catch {
                return .db(error, expected: [6, 7])
            }
        case "increment":
            guard let key = p["key"], let n = p["num"] else { return .invalidParameters }
            let orig: Int64
            switch p.string("orig") {
            case nil: orig = 0
            case "try": orig = Int64.min
            case "set": orig = Int64.max
            case let s?: orig = KTExpiration.parseInteger(Array(s.utf8))
            }
            do {
                let v = try store.increment(db: db, key: key, num: KTExpiration.parseInteger(n), orig: orig, xt: xt)
                return RPCResult(status: 200, out: num(v))
            } catch { return .db(error, expected: [8]) }
        case "increment_double":
            guard let key = p["key"], let n = p.string("num") else { return .invalidParameters }
            let orig: Double
            switch p.string("orig") {
            case nil: orig = 0
            case "try": orig = -.infinity
            case "set": orig = .infinity
            case let s?: orig = Self.atof(s)
            }
            do {
                let v = try store.incrementDouble(db: db, key: key, num: Self.atof(n), orig: orig, xt: xt)
                return RPCResult(status: 200, out: [Array("num".utf8): Array(String(format: "%f", v).utf8)])
            } catch { return .db(error, expected: [8]) }
        case "cas":
            guard let key = p["key"] else { return .invalidParameters }
            do {
                try store.cas(db: db, key: key, old: p["oval"], new: p["nval"], xt: xt)
                return .success
            } catch { return .db(error, expected: [8]) }
        case "remove":
            guard let key = p["key"] else { return .invalidParameters }
            do {
                try store.remove(db: db, key: key)
                return .success
            } catch { return .db(error, expected: [7]) }
        case "get", "seize", "check":
            guard let key = p["key"] else { return .invalidParameters }
            do {
                let r = name == "seize" ? try store.seize(db: db, key: key) : try store.get(db: db, key: key)
                var out: [[UInt8]: [UInt8]] = [:]
                if name == "check" {
                    out[Array("vsiz".utf8)] = Array(String(r.value.count).utf8)
                } else {
                    out[Array("value".utf8)] = r.value
                }
                if r.expiration < KTExpiration.never { out[Array("xt".utf8)] = Array(String(r.expiration).utf8) }
                return RPCResult(status: 200, out: out)
            } catch { return .db(error, expected: [7]) }
        case "set_bulk":
            let records = p.underscored
            for (k, v) in records { store.set(db: db, key: k, value: v, xt: xt) }
            return RPCResult(status: 200, out: num(Int64(records.count)))
        case "remove_bulk":
            var hits: Int64 = 0
            for (k, _) in p.underscored {
                if (try? store.remove(db: db, key: k)) != nil { hits += 1 }
            }
            return RPCResult(status: 200, out: num(hits))
        case "get_bulk":
            var out: [[UInt8]: [UInt8]] = [:]
            var hits: Int64 = 0
            for (k, _) in p.underscored {
                if let r = try? store.get(db: db, key: k) {
                    out[[UInt8(ascii: "_")] + k] = r.value
                    hits += 1
                }
            }
            out[Array("num".utf8)] = Array(String(hits).utf8)
            return RPCResult(status: 200, out: out)
        case "match_prefix", "match_regex", "match_similar":
            let param = name == "match_prefix" ? "prefix" : name == "match_regex" ? "regex" : "origin"
            guard let pattern = p[param] else { return .invalidParameters }
            let max = p.int("max") ?? -1
            let keys: [[UInt8]]
            switch name {
            case "match_prefix":
                keys = store.matchPrefix(db: db, prefix: pattern, max: max)
            case "match_regex":
                guard let regex = try? NSRegularExpression(pattern: String(decoding: pattern, as: UTF8.self)) else {
                    return .error(450, KTDBError(code: 8, name: "logical inconsistency", message: "compilation failed").text)
                }
                keys = store.matchKeys(db: db, max: max) { key in
                    let s = String(decoding: key, as: UTF8.self)
                    return regex.firstMatch(in: s, range: NSRange(s.startIndex..., in: s)) != nil
                }
            default:
                let live = store.matchKeys(db: db, max: -1) { _ in true }
                keys = SimilarKeys.match(origin: pattern, keys: live, range: p.int("range") ?? 1, utf: p.has("utf"), max: max)
            }
            var out: [[UInt8]: [UInt8]] = [:]
            for (i, k) in keys.enumerated() { out[[UInt8(ascii: "_")] + k] = Array(String(i).utf8) }
            out[Array("num".utf8)] = Array(String(keys.count).utf8)
            return RPCResult(status: 200, out: out)
        default:
            return .error(501, "not implemented: \(name)")
        }
    }

    private func cursorProcedure(_ name: String, _ p: RPCParams, _ store: inout Store, _ id: CursorID) -> RPCResult {
        let step = p.has("step")
        func record(_ kr: (key: [UInt8], record: KTRecord), withKey: Bool, withValue: Bool) -> RPCResult {
            var out: [[UInt8]: [UInt8]] = [:]
            if withKey { out[Array("key".utf8)] = kr.key }
            if withValue { out[Array("value".utf8)] = kr.record.value }
            if withKey && withValue, kr.record.expiration < KTExpiration.never {
                out[Array("xt".utf8)] = Array(String(kr.record.expiration).utf8)
            }
            return RPCResult(status: 200, out: out)
        }
        do {
            switch name {
            case "cur_jump": try store.cursorJump(id, key: p["key"]); return .success
            case "cur_jump_back": try store.cursorJumpBack(id, key: p["key"]); return .success
            case "cur_step": try store.cursorStep(id); return .success
            case "cur_step_back": try store.cursorStepBack(id); return .success
            case "cur_set_value":
                guard let value = p["value"] else { return .invalidParameters }
                try store.cursorSetValue(id, value: value, xt: p.int("xt"), step: step)
                return .success
            case "cur_remove": _ = try store.cursorRemove(id); return .success
            case "cur_get_key": return record(try store.cursorGet(id, step: step), withKey: true, withValue: false)
            case "cur_get_value": return record(try store.cursorGet(id, step: step), withKey: false, withValue: true)
            case "cur_get": return record(try store.cursorGet(id, step: step), withKey: true, withValue: true)
            case "cur_seize": return record(try store.cursorRemove(id), withKey: true, withValue: true)
            default: return .error(501, "not implemented: \(name)")
            }
        } catch {
            return .db(error, expected: [7])
        }
    }

    /// `play_script`: disabled without a script file; with one, a ktserver built without
    /// Lua answers `echo` and nothing else. The name must be letters and digits.
    private func playScript(_ p: RPCParams) -> RPCResult {
        guard configuration.scriptFile != nil else { return .error(501, "the scripting extention is disabled") }
        guard let name = p["name"], !name.isEmpty,
              name.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) }) else {
            return .invalidParameters
        }
        guard let results = ScriptProcessor.call(name, p.underscored) else {
            return .error(501, "no such scripting procedure")
        }
        var out: [[UInt8]: [UInt8]] = [:]
        for r in results { out[[UInt8(ascii: "_")] + r.key] = r.value }
        return RPCResult(status: 200, out: out)
    }

    static func atof(_ s: String) -> Double {
        let trimmed = s.trimmingCharacters(in: .whitespaces)
        var end = trimmed.startIndex
        for i in trimmed.indices {
            let prefix = trimmed[trimmed.startIndex...i]
            if Double(prefix) != nil { end = trimmed.index(after: i) }
        }
        return Double(trimmed[trimmed.startIndex..<end]) ?? 0
    }
}
