import ArgumentParser
import NIOCore
import Foundation
import QSClient
import QSDaemon
import QSNet
import QSWire

/// Exit codes (also in `qsctl --help` and docs/operations.md): 0 found/ok, 1 not found or
/// a difference, 2 usage, 3 server or connection error, 4 a damaged recording, 5 `wait`
/// timed out; a reader that went away ends qsctl by SIGPIPE (141).
enum Exit {
    static let notFound = ExitCode(1)
    static let usage = ExitCode(2)
    static let serverError = ExitCode(3)
    static let damaged = ExitCode(4)
}

@main
struct Qsctl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qsctl",
        abstract: "Operate Quicksilver nodes: read and write keys, inspect the log, dump the keyspace, record and inspect feeds.",
        discussion: """
            Exit codes: 0 found/ok; 1 not found (get, delete, checkpoint) or a difference \
            (verify); 2 usage error (a bad flag or QS_CTL_* variable); 3 server or connection \
            error (a refused token included); 4 damaged recording (feed); 5 timed out (wait; cutover, undone); \
            141 (SIGPIPE) the reader of its output went away, e.g. `qsctl dump | head -1`, \
            quietly. Every subcommand that prints takes --output table|json|jsonl. \
            Every option can also be set through its QS_ environment variable, as shown.
            """,
        version: QSVersion.string,
        subcommands: [Put.self, Get.self, Delete.self, HeadCommand.self, Checkpoint.self, Log.self, Dump.self, Status.self, Wait.self, Promote.self, Demote.self, Cutover.self, Verify.self, Lag.self, RecordCommand.self, Feed.self, UsageCommand.self, Rebootstrap.self]
    )

    @OptionGroup var options: NodeOptions

    /// Parses and runs, mapping usage errors to exit code 2.
    static func main() async {
        do {
            try await execute(parseCheckingEnvironment())
        } catch {
            let code = exitCode(for: error)
            if code == .validationFailure || (code != .success && !(error is ExitCode) && !(error is CleanExit)) {
                // argument parser's usage errors: print its message, exit 2
                let message = fullMessage(for: error)
                if !message.isEmpty { FileHandle.standardError.write(Data((message + "\n").utf8)) }
                Foundation.exit(code == .success ? 0 : Exit.usage.rawValue)
            }
            exit(withError: error)
        }
    }
}

/// Options every subcommand shares: which node, the write, admin and read tokens.
struct NodeOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The node's write-protocol address, HOST:PORT or unix:PATH. (env: QS_CTL_NODE)", valueName: "host:port"))
    var node: Address = QSEnv.value("QS_CTL_NODE", Address(.tcp(host: "127.0.0.1", port: 7400)), flag: "--node")

    @Option(help: ArgumentHelp("File holding the node's write token, for writes. (env: QS_CTL_WRITE_TOKEN_FILE)", valueName: "file"))
    var writeTokenFile: String = QSEnv.string("QS_CTL_WRITE_TOKEN_FILE") ?? ""

    @Option(help: ArgumentHelp("File holding the node's admin token (its --admin-token-file), for promote, demote and cutover. (env: QS_CTL_ADMIN_TOKEN_FILE)", valueName: "file"))
    var adminTokenFile: String = QSEnv.string("QS_CTL_ADMIN_TOKEN_FILE") ?? ""

    @Option(help: ArgumentHelp("File holding one of the node's tokens (its --write-token-file, --replication-token-file or --admin-token-file), presented once per connection to read from another machine; the replication token reads every node, replicas included. Default: the write token file, else the admin token file. Presented whatever the address (a loopback forwarder's too); over loopback or a Unix socket the node reads without it. (env: QS_CTL_READ_TOKEN_FILE)", valueName: "file"))
    var readTokenFile: String = QSEnv.string("QS_CTL_READ_TOKEN_FILE") ?? ""

    /// The flag the read token came from when it is not --read-token-file's (`reading`).
    var otherTokenFlag: String?

    @Flag(inversion: .prefixedNo, help: "Keys, values and prefixes given on the command line are base64 (for binary data). (env: QS_CTL_BASE64)")
    var base64: Bool = QSEnv.flag("QS_CTL_BASE64", flag: "--base64")

    @Option(help: ArgumentHelp("How long each request waits for the node's answer before qsctl gives up (exit 3): a stopped, overloaded or cut-off node fails the command instead of hanging it, e.g. 10s. (env: QS_CTL_REQUEST_TIMEOUT)", valueName: "duration"))
    var requestTimeout: Interval = QSEnv.value("QS_CTL_REQUEST_TIMEOUT", Interval(.seconds(10)), flag: "--request-timeout")

    func validate() throws {
        guard requestTimeout.duration > .zero else { throw ValidationError("--request-timeout must be more than 0, e.g. 10s") }
    }

    /// `requestTimeout` as NIO's.
    var requestTimeAmount: TimeAmount { .nanoseconds(Int64(requestTimeout.seconds * 1e9)) }

    func bytes(_ text: String, _ what: String) throws -> [UInt8] {
        guard base64 else { return Array(text.utf8) }
        guard let d = Data(base64Encoded: text) else { throw ValidationError("\(what) '\(text)' is not valid base64") }
        return [UInt8](d)
    }

    /// The admin token for role changes, nil without --admin-token-file (the node then
    /// takes them from this machine only).
    func adminToken() throws -> [UInt8]? {
        do {
            return try TokenFile.optional(adminTokenFile, flag: "--admin-token-file")
        } catch {
            fail("\(error)")
            throw Exit.usage
        }
    }

    /// The write token (empty without --write-token-file) and the token presented for
    /// reads: --read-token-file, else the write token, else the admin token.
    func tokens() throws -> (write: [UInt8], read: [UInt8]) {
        do {
            let write = try TokenFile.optional(writeTokenFile, flag: "--write-token-file") ?? []
            if let read = try TokenFile.optional(readTokenFile, flag: otherTokenFlag ?? "--read-token-file") { return (write, read) }
            return (write, write.isEmpty ? try TokenFile.optional(adminTokenFile, flag: "--admin-token-file") ?? [] : write)
        } catch {
            fail("\(error)")
            throw Exit.usage
        }
    }

    func connect() async throws -> QSClient {
        let (token, read) = try tokens()
        do {
            return try await QSClient.connect(to: node.endpoint, token: token, readToken: read, requestTimeout: requestTimeAmount)
        } catch let ClientError.server(code, message) where ErrorCode(rawValue: code) == .unauthorized {
            fail("node \(node) refused the token qsctl presented to read (\(readTokenOrigin)): \(message)")
            throw Exit.serverError
        } catch {
            fail("cannot connect to node \(node): \(describe(error))")
            throw Exit.serverError
        }
    }

    /// Which file the read token came from, for an error message.
    var readTokenOrigin: String {
        if let otherTokenFlag { return otherTokenFlag }
        return !readTokenFile.isEmpty ? "--read-token-file" : !writeTokenFile.isEmpty ? "--write-token-file" : "--admin-token-file"
    }

    /// These options for reading another node (verify --against, wait --head-of): its
    /// --request-timeout and tokens, with `tokenFile` (given as `flag`) as the read token
    /// when it is given.
    func reading(_ other: Address, tokenFile: String, flag: String) -> NodeOptions {
        var o = self
        o.node = other
        if !tokenFile.isEmpty {
            o.readTokenFile = tokenFile
            o.otherTokenFlag = flag
        }
        return o
    }

    /// Runs `body` with a connection; node errors exit 3 with the node's message.
    func withClient<T>(_ body: (QSClient) async throws -> T) async throws -> T {
        let client = try await connect()
        defer { Task { await client.close() } }
        do {
            return try await body(client)
        } catch let e as ExitCode {
            throw e
        } catch {
            fail(describe(error))
            throw Exit.serverError
        }
    }

    /// An error of a call to `address` (default: --node), in words that say what to do
    /// about a timeout.
    /// The peer closed the connection before any answer: the client's own words for it
    /// (`ClientError.connection` keeps NIO's text for a closed channel).
    static func closedWithoutAnswer(_ error: any Error) -> Bool {
        switch error {
        case let e as ChannelError: return e == .ioOnClosedChannel || e == .eof || e == .alreadyClosed
        case ClientError.connectionClosed: return true
        case let ClientError.connectionFailed(why):
            return [ChannelError.ioOnClosedChannel, .eof, .alreadyClosed].contains { "\($0)" == why }
        default: return false
        }
    }

    func describe(_ error: any Error, _ address: Address? = nil) -> String {
        if Self.closedWithoutAnswer(error) {
            return "node \(address ?? node) closed the connection without an answer (\(error)): the address is most likely not a node's write port (--listen) but a KT, admin or other HTTP port, which closes on the QS protocol's first frame; or the node stopped"
        }
        guard let e = error as? ClientError, e == .timedOut else { return "\(error)" }
        return "node \(address ?? node) did not answer within \(requestTimeout) (--request-timeout): it is stopped, overloaded or cut off (check its process and /healthz), or the address is not a node's write port (--listen): a memcached port, for one, waits for a line's end and never answers"
    }
}

func fail(_ message: String) {
    FileHandle.standardError.write(Data(("qsctl: " + message + "\n").utf8))
}

func printLine(_ s: String) {
    Stdout.write(Array((s + "\n").utf8))
}
