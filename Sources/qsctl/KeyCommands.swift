import ArgumentParser
import Foundation
import QSBytes
import QSClient
import QSDaemon
import QSNet
import QSModel
import QSWire

struct Put: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Set KEY to VALUE on a root node.")

    @ParentCommand var parent: Qsctl
    var options: NodeOptions { parent.options }
    @Argument(help: "The key.") var key: String
    @Argument(help: "The value (or --value-file).") var value: String?
    @Option(help: ArgumentHelp("Read the value from this file, its bytes as they are ('-': standard input), instead of the VALUE argument: for values too large or too binary for a command line. (env: QS_CTL_PUT_VALUE_FILE)", valueName: "file"))
    var valueFile: String = QSEnv.string("QS_CTL_PUT_VALUE_FILE") ?? ""
    @Option(help: ArgumentHelp("Expiration time in epoch seconds (KT's xt); 0, the default, for none. (env: QS_CTL_PUT_EXPIRES)", valueName: "epoch"))
    var expires: UInt64 = QSEnv.value("QS_CTL_PUT_EXPIRES", UInt64(0), flag: "--expires")
    @Option(help: ArgumentHelp("Source id the write is recorded under. (env: QS_CTL_PUT_SOURCE_ID)", valueName: "id"))
    var sourceID: String = QSEnv.string("QS_CTL_PUT_SOURCE_ID") ?? "qsctl"
    @Option(help: outputHelp("QS_CTL_PUT_OUTPUT", "table prints ok and the log index; json {\"index\": n or null, \"changed\": bool}."))
    var output: OutputFormat = QSEnv.value("QS_CTL_PUT_OUTPUT", OutputFormat.table, flag: "--output")

    func validate() throws {
        guard (value == nil) != valueFile.isEmpty else {
            throw ValidationError(value == nil ? "give the VALUE, or --value-file FILE ('-' for standard input)" : "give either VALUE or --value-file (QS_CTL_PUT_VALUE_FILE), not both")
        }
    }

    /// The value: the argument (decoded as --base64 says), or the file's bytes as they are.
    func valueBytes() throws -> [UInt8] {
        if let value { return try options.bytes(value, "VALUE") }
        if valueFile == "-" { return Array(FileHandle.standardInput.readDataToEndOfFile()) }
        guard let data = FileManager.default.contents(atPath: valueFile) else {
            throw ValidationError("--value-file \(valueFile) cannot be read: check the path and permissions")
        }
        return Array(data)
    }

    func run() async throws {
        let op = Mutation.set(key: try options.bytes(key, "KEY"), value: try valueBytes(), expiry: expires == 0 ? nil : expires)
        try await options.withClient { client in
            let r = try await client.write([op], sourceID: sourceID)
            if case let .applied(index, _, dropped) = r {
                var out = Output(output, listing: false)
                out.item(json: "{\"index\":\(index.map { String($0) } ?? "null"),\"changed\":\(index != nil)}",
                         table: index.map { "ok (log index \($0))" } ?? (dropped > 0 ? "ok (identical write, nothing changed)" : "ok"))
                out.finish()
            }
        }
    }
}

struct Delete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Delete KEY on a root node; exits 1 if it was absent.")

    @ParentCommand var parent: Qsctl
    var options: NodeOptions { parent.options }
    @Argument(help: "The key.") var key: String
    @Option(help: ArgumentHelp("Source id the write is recorded under. (env: QS_CTL_DELETE_SOURCE_ID)", valueName: "id"))
    var sourceID: String = QSEnv.string("QS_CTL_DELETE_SOURCE_ID") ?? "qsctl"
    @Option(help: outputHelp("QS_CTL_DELETE_OUTPUT", "table prints the log index of the delete; json {\"index\": n}."))
    var output: OutputFormat = QSEnv.value("QS_CTL_DELETE_OUTPUT", OutputFormat.table, flag: "--output")

    func run() async throws {
        let k = try options.bytes(key, "KEY")
        let found = try await options.withClient { client -> Bool in
            let r = try await client.write([.delete(key: k)], sourceID: sourceID)
            if case let .applied(index?, _, _) = r {
                var out = Output(output, listing: false)
                out.item(json: "{\"index\":\(index)}", table: "deleted (log index \(index))")
                out.finish()
                return true
            }
            return false
        }
        if !found {
            fail("not found: \(key)")
            throw Exit.notFound
        }
    }
}

struct Get: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print KEY's value; exits 1 if absent or expired.")

    @ParentCommand var parent: Qsctl
    var options: NodeOptions { parent.options }
    @Argument(help: "The key.") var key: String
    @Option(help: outputHelp("QS_CTL_GET_OUTPUT", "table prints the raw value (ending with a newline on a terminal, not in a pipe); json {key, value, xt} with base64 key and value."))
    var output: OutputFormat = QSEnv.value("QS_CTL_GET_OUTPUT", OutputFormat.table, flag: "--output")

    func run() async throws {
        let k = try options.bytes(key, "KEY")
        let record = try await options.withClient { try await $0.get(k) }
        guard let record else {
            fail("not found: \(key)")
            throw Exit.notFound
        }
        if output == .table {
            Stdout.write(isatty(1) == 1 ? record.value + [10] : record.value)
        } else {
            printLine(recordJSON(key: k, record: record))
        }
    }
}

struct HeadCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "head", abstract: "Print the log head: index, chained hash, commit time.")

    @ParentCommand var parent: Qsctl
    var options: NodeOptions { parent.options }
    @Option(help: outputHelp("QS_CTL_HEAD_OUTPUT", "json {index, hash, commit_time_ns}; table one line."))
    var output: OutputFormat = QSEnv.value("QS_CTL_HEAD_OUTPUT", OutputFormat.json, flag: "--output")

    func run() async throws {
        let h = try await options.withClient { try await $0.head() }
        var out = Output(output, listing: false)
        out.item(json: "{\"index\":\(h.index),\"hash\":\"\(hexString(h.hash))\",\"commit_time_ns\":\(h.commitTimeNs)}",
                 table: "index \(h.index)  hash \(hexString(h.hash))  commit time \(h.commitTimeNs) ns")
        out.finish()
    }
}

struct Checkpoint: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print a source's checkpoint (last applied position); exits 1 if it never wrote.")

    @ParentCommand var parent: Qsctl
    var options: NodeOptions { parent.options }
    @Argument(help: "The source id.") var sourceID: String
    @Option(help: outputHelp("QS_CTL_CHECKPOINT_OUTPUT", "table prints the position; json {source_id, checkpoint}."))
    var output: OutputFormat = QSEnv.value("QS_CTL_CHECKPOINT_OUTPUT", OutputFormat.table, flag: "--output")

    func run() async throws {
        let cp = try await options.withClient { try await $0.checkpoint(sourceID: sourceID) }
        guard let cp else {
            fail("no checkpoint for source \(sourceID)")
            throw Exit.notFound
        }
        var out = Output(output, listing: false)
        out.item(json: "{\"source_id\":\(jsonString(sourceID)),\"checkpoint\":\(cp)}", table: "\(cp)")
        out.finish()
    }
}
