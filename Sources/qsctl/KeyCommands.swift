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
    @Argument(help: "The value.") var value: String
    @Option(help: ArgumentHelp("Expiration time in epoch seconds (KT's xt); 0, the default, for none. (env: QS_CTL_PUT_EXPIRES)", valueName: "epoch"))
    var expires: UInt64 = QSEnv.value("QS_CTL_PUT_EXPIRES", UInt64(0), flag: "--expires")
    @Option(help: ArgumentHelp("Source id the write is recorded under. (env: QS_CTL_PUT_SOURCE_ID)", valueName: "id"))
    var sourceID: String = QSEnv.string("QS_CTL_PUT_SOURCE_ID") ?? "qsctl"

    func run() async throws {
        let op = Mutation.set(key: try options.bytes(key, "KEY"), value: try options.bytes(value, "VALUE"), expiry: expires == 0 ? nil : expires)
        try await options.withClient { client in
            let r = try await client.write([op], sourceID: sourceID)
            if case let .applied(index, _, dropped) = r {
                printLine(index.map { "ok (log index \($0))" } ?? (dropped > 0 ? "ok (identical write, nothing changed)" : "ok"))
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

    func run() async throws {
        let k = try options.bytes(key, "KEY")
        let found = try await options.withClient { client -> Bool in
            let r = try await client.write([.delete(key: k)], sourceID: sourceID)
            if case let .applied(index?, _, _) = r {
                printLine("deleted (log index \(index))")
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
    @Flag(inversion: .prefixedNo, help: "Print a JSON line {key, value, xt} with base64 key and value instead of the raw value. (env: QS_CTL_GET_JSON)")
    var json = QSEnv.flag("QS_CTL_GET_JSON", flag: "--json")

    func run() async throws {
        let k = try options.bytes(key, "KEY")
        let record = try await options.withClient { try await $0.get(k) }
        guard let record else {
            fail("not found: \(key)")
            throw Exit.notFound
        }
        if json {
            printLine(recordJSON(key: k, record: record))
        } else {
            FileHandle.standardOutput.write(Data(record.value))
            if isatty(1) == 1 { printLine("") }
        }
    }
}

struct HeadCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "head", abstract: "Print the log head: index, chained hash, commit time.")

    @ParentCommand var parent: Qsctl
    var options: NodeOptions { parent.options }

    func run() async throws {
        let h = try await options.withClient { try await $0.head() }
        printLine("{\"index\":\(h.index),\"hash\":\"\(hexString(h.hash))\",\"commit_time_ns\":\(h.commitTimeNs)}")
    }
}

struct Checkpoint: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print a source's checkpoint (last applied position); exits 1 if it never wrote.")

    @ParentCommand var parent: Qsctl
    var options: NodeOptions { parent.options }
    @Argument(help: "The source id.") var sourceID: String

    func run() async throws {
        let cp = try await options.withClient { try await $0.checkpoint(sourceID: sourceID) }
        guard let cp else {
            fail("no checkpoint for source \(sourceID)")
            throw Exit.notFound
        }
        printLine("\(cp)")
    }
}
