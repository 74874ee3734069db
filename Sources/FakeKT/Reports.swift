import Foundation
import KTFormats

extension FakeKTCore {
    static let version = "0.9.56"

    func report(_ store: inout Store) -> RPCResult {
        var out: [String: String] = [:]
        var totalCount = 0
        var totalSize = 0
        for (i, db) in store.databases.enumerated() {
            let count = db.count(now: store.now)
            let size = db.size()
            out["db_\(i)"] = "count=\(count) size=\(size) path=\(db.path)"
            totalCount += count
            totalSize += size
        }
        let now = Double(nowMillis()) / 1000
        out["db_total_count"] = String(totalCount)
        out["db_total_size"] = String(totalSize)
        out["serv_conn_count"] = "1"
        out["serv_task_count"] = "0"
        out["serv_thread_count"] = String(configuration.threads)
        out["serv_current_time"] = String(format: "%.6f", now)
        out["serv_running_term"] = String(format: "%.6f", now - startTime.timeIntervalSince1970)
        out["serv_proc_id"] = String(ProcessInfo.processInfo.processIdentifier)
        for key in ["cnt_set", "cnt_set_misses", "cnt_remove", "cnt_remove_misses", "cnt_get", "cnt_get_misses", "cnt_script", "cnt_misc"] {
            out[key] = "0"
        }
        out["conf_kt_version"] = "\(Self.version) (2.19)"
        out["conf_kt_features"] = ""
        out["conf_kc_version"] = "1.2.76 (16.13)"
        out["conf_kc_features"] = ""
        out["conf_os_name"] = "Linux"
        return RPCResult(status: 200, out: Dictionary(uniqueKeysWithValues: out.map { (Array($0.key.utf8), Array($0.value.utf8)) }))
    }

    func status(_ store: inout Store, _ index: Int) -> RPCResult {
        let db = store.databases[index]
        let type = db.kind == .tree ? (db.path == "%" ? "GrassDB" : "TreeDB") : (db.path == "*" ? "CacheDB" : "HashDB")
        let realtype = db.kind == .tree ? (db.path == "%" ? "33" : "49") : (db.path == "*" ? "32" : "48")
        let out: [String: String] = [
            "count": String(db.count(now: store.now)),
            "size": String(db.size()),
            "path": db.path,
            "realtype": realtype,
            "type": realtype,
            "ktcapcnt": "-1",
            "ktcapsiz": "-1",
            "ktopts": "0",
            "class": type,
        ]
        return RPCResult(status: 200, out: Dictionary(uniqueKeysWithValues: out.map { (Array($0.key.utf8), Array($0.value.utf8)) }))
    }

    func ulogList() -> RPCResult {
        guard let dir = configuration.ulogDirectory else { return .error(400, "no update log allows no replication") }
        flushUpdateLog()
        var out: [[UInt8]: [UInt8]] = [:]
        for (path, header) in ULogDirectory.list(dir) {
            out[Array(path.utf8)] = Array("\(header.size):\(header.timestamp)".utf8)
        }
        return RPCResult(status: 200, out: out)
    }

    /// Removes the ulog files, except the newest, whose newest timestamp is at most `ts`.
    func ulogRemove(_ p: RPCParams) -> RPCResult {
        guard let dir = configuration.ulogDirectory else { return .error(400, "no update log allows no replication") }
        flushUpdateLog()
        let ts: UInt64
        switch p.string("ts") {
        case nil: ts = UInt64.max
        case "now": ts = KTClock.pure(nowMillis: nowMillis())
        case let s?: ts = UInt64(clamping: KTExpiration.parseInteger(Array(s.utf8)))
        }
        var files = ULogDirectory.list(dir)
        if !files.isEmpty { files.removeLast() }
        for (path, header) in files where header.timestamp <= ts {
            do {
                try FileManager.default.removeItem(atPath: path)
            } catch {
                return .error(500, "removing a file failed: \(path)")
            }
        }
        return .success
    }
}
