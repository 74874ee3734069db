import QSDaemon
import QSNet
import ArgumentParser
import Foundation
import QSCaptures

struct Feed: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show what a recording (a KT capture such as stream.bin, or a QS capture) holds.",
        discussion: """
            Both subcommands stream the file: a recording larger than memory works. A file \
            cut inside a frame or holding a corrupt frame: everything before it is shown, then \
            the byte offset is reported and the exit code is 4. A missing file: exit code 1.
            """,
        subcommands: [FeedShow.self, FeedStats.self]
    )
}

/// Reads a recording to its end, handing every item to `body`; a damaged file is
/// reported with its byte offset (exit code 4) after every complete frame.
func readRecording(_ path: String, _ body: (RecordedItem) throws -> Bool) throws {
    var reader: RecordingReader
    guard FileManager.default.fileExists(atPath: path) else {
        fail("no such recording: \(path)")
        throw Exit.notFound
    }
    do {
        reader = try RecordingReader(path: path)
    } catch {
        fail("\(error)")
        throw Exit.damaged
    }
    do {
        while let item = try reader.next() {
            guard try body(item) else { return }
        }
    } catch let e as ExitCode {
        throw e
    } catch {
        fail("\(error)")
        throw Exit.damaged
    }
}

/// One update as a JSON line.
func updateJSON(_ u: RecordedUpdate) -> String {
    var line = "{\"offset\":\(u.offset),\"position\":\(u.position)"
    if let sid = u.sid { line += ",\"sid\":\(sid)" }
    if let db = u.db { line += ",\"db\":\(db)" }
    if let o = u.originSource { line += ",\"origin\":\(jsonString(o))" }
    if let p = u.originPosition { line += ",\"origin_position\":\(p)" }
    line += ",\"op\":\"\(u.op)\",\"key\":\"\(b64(u.key))\""
    if let v = u.value { line += ",\"value\":\"\(b64(v))\",\"xt\":\(u.xt.map { String($0) } ?? "null")" }
    return line + "}"
}

/// One update as a table line: offset, position, op, key, value (escaped), xt.
func updateTable(_ u: RecordedUpdate) -> String {
    var line = "\(u.offset)\t\(u.position)\t\(u.op)\t\(printable(u.key))"
    if let v = u.value { line += "\t\(printable(v))\t\(u.xt.map { String($0) } ?? "-")" }
    return line
}

struct FeedShow: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Print a recording's updates (JSON lines by default).",
        discussion: """
            A line: {"offset": byte offset of the frame, "position": KT timestamp or QS log index, \
            "sid": KT origin sid (QS: "origin" source id and "origin_position"), "db": KT \
            database, "op": set|remove|delete|clear, "key" and "value" in base64, "xt": expiry \
            in epoch seconds or null}. An undecodable update is printed as {"offset", \
            "position", "error"} and makes the exit code 4.
            """
    )

    @ParentCommand var parent: Qsctl
    @Argument(help: "The recording.") var file: String
    @Option(help: ArgumentHelp("Only updates at or after this position (KT timestamp, QS log index). (env: QS_CTL_FEED_SHOW_FROM)", valueName: "pos"))
    var from: UInt64 = QSEnv.value("QS_CTL_FEED_SHOW_FROM", UInt64(0), flag: "--from")
    @Option(help: ArgumentHelp("Print at most this many updates. (env: QS_CTL_FEED_SHOW_COUNT)", valueName: "n"))
    var count: OrNone<Int> = QSEnv.value("QS_CTL_FEED_SHOW_COUNT", .none, flag: "--count")
    @Option(help: ArgumentHelp("Only keys starting with this prefix (base64 with --base64). (env: QS_CTL_FEED_SHOW_PREFIX)", valueName: "prefix"))
    var prefix: String = QSEnv.string("QS_CTL_FEED_SHOW_PREFIX") ?? ""
    @Option(help: ArgumentHelp("Only this KT database. (env: QS_CTL_FEED_SHOW_DB)", valueName: "n"))
    var db: OrNone<UInt16> = QSEnv.value("QS_CTL_FEED_SHOW_DB", .none, flag: "--db")
    @Option(help: outputHelp("QS_CTL_FEED_SHOW_OUTPUT", "jsonl an update a line; table offset, position, op, key and value (escaped), xt."))
    var output: OutputFormat = QSEnv.value("QS_CTL_FEED_SHOW_OUTPUT", OutputFormat.jsonl, flag: "--output")

    func run() async throws {
        let p = try parent.options.bytes(prefix, "--prefix")
        var left = count.value ?? Int.max
        var undecodable = 0
        var out = Output(output, listing: true)
        defer { out.finish() }
        try readRecording(file) { item in
            guard left > 0 else { return false }
            switch item {
            case .heartbeat: return true
            case let .undecodable(offset, position, reason):
                guard position >= from else { return true }
                undecodable += 1
                out.item(json: "{\"offset\":\(offset),\"position\":\(position),\"error\":\(jsonString(reason))}",
                         table: "\(offset)\t\(position)\terror\t\(reason)")
            case let .update(u):
                guard u.position >= from, u.key.starts(with: p), db.value == nil || u.db == db.value else { return true }
                out.item(json: updateJSON(u), table: updateTable(u))
                left -= 1
            }
            return true
        }
        if undecodable > 0 {
            fail("\(undecodable) undecodable update(s) in \(file), shown with their byte offsets")
            throw Exit.damaged
        }
    }
}

struct FeedStats: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats",
        abstract: "Print a recording's statistics as JSON.",
        discussion: """
            Counts by database (KT index; QS: origin source id) and operation; key and value \
            size percentiles from a log-bucket histogram (bounded; each within 1/16 of the \
            exact value); the busiest keys from Misra-Gries counters over at most --key-capacity \
            keys (a count is low by at most "max_undercount"); updates per second over time in \
            at most 120 buckets whose width doubles as the recording grows. Memory stays \
            bounded whatever the size of the file.
            """
    )

    @Argument(help: "The recording.") var file: String
    @Option(help: ArgumentHelp("How many busiest keys to print. (env: QS_CTL_FEED_STATS_TOP)", valueName: "n"))
    var top: Int = QSEnv.value("QS_CTL_FEED_STATS_TOP", Int(10), flag: "--top")
    @Option(help: ArgumentHelp("Keys tracked for the busiest-keys estimate. (env: QS_CTL_FEED_STATS_KEY_CAPACITY)", valueName: "n"))
    var keyCapacity: Int = QSEnv.value("QS_CTL_FEED_STATS_KEY_CAPACITY", Int(1024), flag: "--key-capacity")
    @Option(help: outputHelp("QS_CTL_FEED_STATS_OUTPUT", "json (or jsonl, the same one line) the statistics object; table a summary."))
    var output: OutputFormat = QSEnv.value("QS_CTL_FEED_STATS_OUTPUT", OutputFormat.json, flag: "--output")

    func run() async throws {
        var stats = FeedStatistics(keyCapacity: max(keyCapacity, top))
        var damage: ExitCode?
        do {
            try readRecording(file) { stats.add($0); return true }
        } catch let e as ExitCode {
            damage = e
        }
        var out = Output(output, listing: false)
        out.item(json: statsJSON(stats, top: top, damaged: damage != nil), table: statsTable(stats, top: top, damaged: damage != nil))
        out.finish()
        if let damage { throw damage }
    }

    func statsTable(_ s: FeedStatistics, top: Int, damaged: Bool) -> String {
        var lines = ["updates \(s.updates)  heartbeats \(s.heartbeats)  undecodable \(s.undecodable)\(damaged ? "  (damaged)" : "")",
                     "positions \(s.firstPosition.map { String($0) } ?? "-") … \(s.lastPosition.map { String($0) } ?? "-")"]
        for db in s.byDatabase.keys.sorted() {
            let ops = (s.byDatabase[db] ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
            lines.append("database \(printable(Array(db.utf8))): \(ops)")
        }
        for (name, h) in [("key", s.keySizes), ("value", s.valueSizes)] {
            lines.append("\(name) sizes  p50 \(h.percentile(0.5))  p90 \(h.percentile(0.9))  p99 \(h.percentile(0.99))  max \(h.max)  total \(h.total)")
        }
        for k in s.busiestKeys.top(top) { lines.append("busy \(k.count)\t\(printable(Array(k.key.db.utf8)))\t\(printable(k.key.key))") }
        return lines.joined(separator: "\n")
    }

    func statsJSON(_ s: FeedStatistics, top: Int, damaged: Bool) -> String {
        func sizes(_ h: SizeHistogram) -> String {
            "{\"count\":\(h.count),\"p50\":\(h.percentile(0.5)),\"p90\":\(h.percentile(0.9)),\"p99\":\(h.percentile(0.99)),\"max\":\(h.max),\"total\":\(h.total)}"
        }
        let dbs = s.byDatabase.keys.sorted().map { db in
            let ops = (s.byDatabase[db] ?? [:]).sorted { $0.key < $1.key }.map { "\"\($0.key)\":\($0.value)" }.joined(separator: ",")
            return "\(jsonString(db)):{\(ops)}"
        }.joined(separator: ",")
        let busiest = s.busiestKeys.top(top).map { "{\"db\":\(jsonString($0.key.db)),\"key\":\"\(b64($0.key.key))\",\"count\":\($0.count)}" }
            .joined(separator: ",")
        let t = s.timeline
        let buckets = t.counts.enumerated().map { i, n in
            "{\"start\":\((t.startSecond ?? 0) + UInt64(i) * t.widthSeconds),\"updates\":\(n),\"per_second\":\(Double(n) / Double(t.widthSeconds))}"
        }.joined(separator: ",")
        var out = "{\"updates\":\(s.updates),\"heartbeats\":\(s.heartbeats),\"undecodable\":\(s.undecodable),\"damaged\":\(damaged)"
        out += ",\"first_position\":\(s.firstPosition.map { String($0) } ?? "null"),\"last_position\":\(s.lastPosition.map { String($0) } ?? "null")"
        out += ",\"databases\":{\(dbs)},\"key_sizes\":\(sizes(s.keySizes)),\"value_sizes\":\(sizes(s.valueSizes))"
        out += ",\"busiest_keys\":{\"max_undercount\":\(s.busiestKeys.maxUndercount),\"keys\":[\(busiest)]}"
        out += ",\"timeline\":{\"bucket_seconds\":\(t.widthSeconds),\"buckets\":[\(buckets)]}}"
        return out
    }
}
