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
        out["conf_kt_features"] = "(epoll)"
        out["conf_kc_version"] = "1.2.76 (16.13)"
        out["conf_kc_features"] = "(atomic)(zlib)"
        out["conf_os_name"] = "Linux"
        out.merge(Self.systemReport()) { a, _ in a }
        return RPCResult(status: 200, out: Dictionary(uniqueKeysWithValues: out.map { (Array($0.key.utf8), Array($0.value.utf8)) }))
    }

    /// ktserver's `sys_*` entries (Kyoto Cabinet's `getsysinfo` on Linux): the process's
    /// memory from /proc/self/status, the machine's from /proc/meminfo, CPU times from
    /// getrusage. An entry that cannot be read is left out, as Kyoto Cabinet leaves it.
    static func systemReport() -> [String: String] {
        var out: [String: String] = [:]
        var usage = rusage()
        if getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage) == 0 {
            out["sys_ru_utime"] = String(format: "%.6f", Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6)
            out["sys_ru_stime"] = String(format: "%.6f", Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6)
        }
        /// "Name:   1234 kB" lines as bytes.
        func kilobytes(_ path: String, _ names: [String: String]) {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return }
            for line in text.split(separator: "\n") {
                let parts = line.split(whereSeparator: { $0 == ":" || $0.isWhitespace })
                guard parts.count >= 2, let entry = names[String(parts[0])], let kb = Int64(parts[1]) else { continue }
                out[entry] = String(kb * 1024)
            }
        }
        kilobytes("/proc/self/status", ["VmPeak": "sys_mem_peak", "VmSize": "sys_mem_size", "VmRSS": "sys_mem_rss"])
        kilobytes("/proc/meminfo", ["MemTotal": "sys_mem_total", "MemFree": "sys_mem_free", "Cached": "sys_mem_cached"])
        return out
    }

    /// `status` of one database: the fields ktserver reports for Kyoto Cabinet's database of
    /// that type (tuning values at its defaults; a B+ tree's page counts as for one leaf), and
    /// TimedDB's `ktopts`, `ktcapcnt`, `ktcapsiz`. Not `opaque`, nor the fields Kyoto Cabinet
    /// fills only when a caller asks for them (`bnum_used`, `fbpnum_used`, `cusage_*`).
    func status(_ store: inout Store, _ index: Int) -> RPCResult {
        let db = store.databases[index]
        let kind = db.kind
        let count = String(db.count(now: store.now))
        var out: [String: String] = [
            "count": count,
            "size": String(db.size()),
            "path": db.path,
            "type": String(kind.rawValue),
            "realtype": String(kind.rawValue),
            "ktopts": "0",
            "ktcapcnt": "-1",
            "ktcapsiz": "-1",
        ]
        let library = ["libver": "16", "librev": "13", "recovered": "0", "reorganized": "0"]
        switch kind {
        case .prototypeHash, .prototypeTree, .text:
            break
        case .stash:
            break
        case .cache, .grass:
            out.merge(library) { a, _ in a }
            out.merge(["fmtver": "1", "chksum": "255", "opts": "0", "bnum": "1048583", "capcnt": "-1", "capsiz": "-1"]) { a, _ in a }
        case .hash, .tree:
            out.merge(library) { a, _ in a }
            out.merge(["fmtver": "5", "chksum": "0", "flags": "0", "apow": kind == .tree ? "8" : "3", "fpow": "10", "opts": "0",
                       "bnum": kind == .tree ? "65536" : "1048583", "msiz": String(64 << 20), "dfunit": "0", "frgcnt": "0",
                       "realsize": String(db.size()), "trimmed": "0"]) { a, _ in a }
        case .directory, .forest:
            out.merge(library) { a, _ in a }
            out.merge(["fmtver": "1", "chksum": "0", "flags": "0", "opts": "0"]) { a, _ in a }
        }
        if kind == .grass || kind == .tree || kind == .forest {
            // A B+ tree over an inner cache, hash or directory database adds its own fields.
            out.merge(["psiz": "8192", "pccap": String(64 << 20), "rcomp": "lexical", "root": "1", "first": "1", "last": "1",
                       "lcnt": "1", "icnt": "0", "pnum": "2", "cusage": "0"]) { _, b in b }
        }
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
