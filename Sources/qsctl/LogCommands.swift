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
    static let configuration = CommandConfiguration(abstract: "Print log entries as JSON lines, from index N.")

    @ParentCommand var parent: Qsctl
    var options: NodeOptions { parent.options }
    @Option(help: ArgumentHelp("First index to print. (env: QS_CTL_LOG_FROM)", valueName: "n"))
    var from: UInt64 = QSEnv.value("QS_CTL_LOG_FROM", UInt64(1), flag: "--from")
    @Option(help: ArgumentHelp("How many entries at most; 0, the default, to the head. (env: QS_CTL_LOG_COUNT)", valueName: "m"))
    var count: UInt64 = QSEnv.value("QS_CTL_LOG_COUNT", UInt64(0), flag: "--count")

    func run() async throws {
        try await options.withClient { client in
            var next = max(from, 1)
            var left = count == 0 ? UInt64.max : count
            while left > 0 {
                let list = try await client.entries(from: next, count: UInt32(min(left, 1000)))
                if list.isEmpty { break }
                for e in list {
                    var line = "{\"index\":\(e.index),\"hash\":\"\(hexString(e.hash))\""
                    if let entry = try? LogEntry.decode(e.bytes) {
                        line += ",\"commit_time_ns\":\(entry.commitTimeNs),\"source_id\":\(jsonString(entry.origin.sourceID))"
                        line += ",\"position\":\(entry.origin.position),\"ops\":[" + entry.operations.map(operationJSON).joined(separator: ",") + "]"
                    } else {
                        line += ",\"undecodable\":\"\(b64(e.bytes))\""
                    }
                    printLine(line + "}")
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
        abstract: "Print every live record, one JSON line each: {\"key\": base64, \"value\": base64, \"xt\": epoch seconds or null}.",
        discussion: "Streams page by page, so keyspaces larger than memory work."
    )

    enum Format: String, ExpressibleByArgument, CaseIterable { case jsonl }

    @ParentCommand var parent: Qsctl
    var options: NodeOptions { parent.options }
    @Option(help: "Output format. (env: QS_CTL_DUMP_FORMAT)") var format: Format = QSEnv.value("QS_CTL_DUMP_FORMAT", Format.jsonl, flag: "--format")
    @Option(help: ArgumentHelp("Only keys starting with this prefix. (env: QS_CTL_DUMP_PREFIX)", valueName: "prefix"))
    var prefix: String = QSEnv.string("QS_CTL_DUMP_PREFIX") ?? ""
    @Option(help: ArgumentHelp("Judge expiry at this instant (epoch seconds); 0, the default, for now. (env: QS_CTL_DUMP_AT)", valueName: "epoch"))
    var at: UInt64 = QSEnv.value("QS_CTL_DUMP_AT", UInt64(0), flag: "--at")
    @Option(help: ArgumentHelp("Records per page. (env: QS_CTL_DUMP_PAGE_SIZE)", valueName: "n"))
    var pageSize: UInt32 = QSEnv.value("QS_CTL_DUMP_PAGE_SIZE", UInt32(1000), flag: "--page-size")

    func run() async throws {
        let p = try options.bytes(prefix, "--prefix")
        try await options.withClient { client in
            var cursor = [UInt8]()
            while true {
                let page = try await client.scan(prefix: p, cursor: cursor, limit: pageSize, asOf: at)
                var out = ""
                for r in page.records { out += recordJSON(key: r.key, record: r.record) + "\n" }
                FileHandle.standardOutput.write(Data(out.utf8))
                guard let next = page.next else { break }
                cursor = next
            }
        }
    }
}
