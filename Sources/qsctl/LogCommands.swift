import ArgumentParser
import Foundation
import QSBytes
import QSClient
import QSDaemon
import QSNet
import QSModel
import QSWire

func b64(_ bytes: [UInt8]) -> String { Data(bytes).base64EncodedString() }

func jsonString(_ s: String) -> String {
    var out = ""
    JSONLogHandler.appendJSONString(s, to: &out)
    return out
}

/// `{"key": base64, "value": base64, "xt": epoch-seconds or null}`
func recordJSON(key: [UInt8], record: Record) -> String {
    "{\"key\":\"\(b64(key))\",\"value\":\"\(b64(record.value))\",\"xt\":\(record.expiry.map { String($0) } ?? "null")}"
}

/// A record as a table line: key, value (both escaped to printable text) and expiry.
func recordTable(key: [UInt8], record: Record) -> String {
    "\(printable(key))\t\(printable(record.value))\t\(record.expiry.map { String($0) } ?? "-")"
}

func operationTable(_ op: Mutation) -> String {
    switch op {
    case let .set(k, v, x): return "set \(printable(k))=\(printable(v))\(x.map { " xt \($0)" } ?? "")"
    case let .delete(k): return "delete \(printable(k))"
    case let .clearPrefix(p): return "clear \(printable(p))*"
    }
}

func operationJSON(_ op: Mutation) -> String {
    switch op {
    case let .set(k, v, x):
        return "{\"op\":\"set\",\"key\":\"\(b64(k))\",\"value\":\"\(b64(v))\",\"xt\":\(x.map { String($0) } ?? "null")}"
    case let .delete(k):
        return "{\"op\":\"delete\",\"key\":\"\(b64(k))\"}"
    case let .clearPrefix(p):
        return "{\"op\":\"clear\",\"prefix\":\"\(b64(p))\"}"
    }
}

struct Log: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print log entries from index N (JSON lines by default).")

    @ParentCommand var parent: Qsctl
    var options: NodeOptions { parent.options }
    @Option(help: ArgumentHelp("First index to print. (env: QS_CTL_LOG_FROM)", valueName: "n"))
    var from: UInt64 = QSEnv.value("QS_CTL_LOG_FROM", UInt64(1), flag: "--from")
    @Option(help: ArgumentHelp("How many entries at most; 0, the default, to the head. (env: QS_CTL_LOG_COUNT)", valueName: "m"))
    var count: UInt64 = QSEnv.value("QS_CTL_LOG_COUNT", UInt64(0), flag: "--count")
    @Option(help: outputHelp("QS_CTL_LOG_OUTPUT", "jsonl {index, hash, commit_time_ns, source_id, position, ops}; table a line an entry."))
    var output: OutputFormat = QSEnv.value("QS_CTL_LOG_OUTPUT", OutputFormat.jsonl, flag: "--output")

    func run() async throws {
        var out = Output(output, listing: true)
        defer { out.finish() }
        try await options.withClient { client in
            var next = max(from, 1)
            var left = count == 0 ? UInt64.max : count
            while left > 0 {
                let list = try await client.entries(from: next, count: UInt32(min(left, 1000)))
                if list.isEmpty { break }
                for e in list {
                    let entry = try? LogEntry.decode(e.bytes)
                    out.item(json: {
                        var line = "{\"index\":\(e.index),\"hash\":\"\(hexString(e.hash))\""
                        if let entry {
                            line += ",\"commit_time_ns\":\(entry.commitTimeNs),\"source_id\":\(jsonString(entry.origin.sourceID))"
                            line += ",\"position\":\(entry.origin.position),\"ops\":[" + entry.operations.map(operationJSON).joined(separator: ",") + "]"
                            if let cursor = entry.copyCursor { line += ",\"copy_cursor\":\"\(b64(cursor))\"" }
                            if let descriptor = entry.descriptor { line += ",\"descriptor\":\(jsonString(descriptor))" }
                        } else {
                            line += ",\"undecodable\":\"\(b64(e.bytes))\""
                        }
                        return line + "}"
                    }(), table: {
                        guard let entry else { return "\(e.index)\t\(hexString(e.hash))\tundecodable" }
                        let what = entry.descriptor.map { "descriptor recorded: \($0)" } ?? entry.operations.map(operationTable).joined(separator: "; ")
                        return "\(e.index)\t\(hexString(e.hash))\t\(printable(Array(entry.origin.sourceID.utf8)))@\(entry.origin.position)\t" + what
                    }())
                    next = e.index + 1
                    left -= 1
                    if left == 0 { break }
                }
            }
        }
    }
}

struct Dump: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print every live record (JSON lines by default: {\"key\": base64, \"value\": base64, \"xt\": epoch seconds or null}).",
        discussion: "Streams page by page, so keyspaces larger than memory work."
    )

    @ParentCommand var parent: Qsctl
    var options: NodeOptions { parent.options }
    @Option(help: outputHelp("QS_CTL_DUMP_OUTPUT", "jsonl {key, value, xt} with base64 key and value; table key, value (escaped) and xt separated by tabs."))
    var output: OutputFormat = QSEnv.value("QS_CTL_DUMP_OUTPUT", OutputFormat.jsonl, flag: "--output")
    @Option(help: ArgumentHelp("Only keys starting with this prefix. (env: QS_CTL_DUMP_PREFIX)", valueName: "prefix"))
    var prefix: String = QSEnv.string("QS_CTL_DUMP_PREFIX") ?? ""
    @Option(help: ArgumentHelp("Judge expiry at this instant (epoch seconds); 0, the default, for now. (env: QS_CTL_DUMP_AT)", valueName: "epoch"))
    var at: UInt64 = QSEnv.value("QS_CTL_DUMP_AT", UInt64(0), flag: "--at")
    @Option(help: ArgumentHelp("Records per page. (env: QS_CTL_DUMP_PAGE_SIZE)", valueName: "n"))
    var pageSize: UInt32 = QSEnv.value("QS_CTL_DUMP_PAGE_SIZE", UInt32(1000), flag: "--page-size")

    func run() async throws {
        let p = try options.bytes(prefix, "--prefix")
        var out = Output(output, listing: true)
        defer { out.finish() }
        try await options.withClient { client in
            var cursor = [UInt8]()
            while true {
                let page = try await client.scan(prefix: p, cursor: cursor, limit: pageSize, asOf: at)
                for r in page.records { out.item(json: recordJSON(key: r.key, record: r.record), table: recordTable(key: r.key, record: r.record)) }
                out.flush()
                guard let next = page.next else { break }
                cursor = next
            }
        }
    }
}
