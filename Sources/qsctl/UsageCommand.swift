import ArgumentParser
import Foundation
import QSDaemon
import QSRest

/// `qsctl usage --acl FILE`: what each producer stores on a node.
struct UsageCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "usage",
        abstract: "Keys and bytes stored per producer of a qsrest ACL, and the keys no producer owns, by scanning a node.",
        discussion: """
            Bytes stored are keys, values and the store's own per-record overhead (1 tag byte \
            of the stored key, 1 flags byte, 8 bytes of expiry when set, the long-key form \
            beyond 477 bytes, LMDB's 10 bytes of node header and slot): see docs/operations.md \
            ("qsrest"). A key under a shared prefix counts for every producer sharing it. \
            Scan a replica, not the root, on a large keyspace.
            """
    )

    @ParentCommand var parent: Qsctl
    var options: NodeOptions { parent.options }
    @Option(help: ArgumentHelp("The qsrest ACL whose producers' prefixes are measured. (env: QS_CTL_USAGE_ACL)", valueName: "file"))
    var acl: String = QSEnv.string("QS_CTL_USAGE_ACL") ?? ""
    @Option(help: outputHelp("QS_CTL_USAGE_OUTPUT", "json one object {producers: {NAME: {keys, key_bytes, value_bytes, overhead_bytes, total_bytes}}, unowned: {…, sample}}; table a line a producer."))
    var output: OutputFormat = QSEnv.value("QS_CTL_USAGE_OUTPUT", OutputFormat.table, flag: "--output")
    @Option(help: ArgumentHelp("Records per page. (env: QS_CTL_USAGE_PAGE_SIZE)", valueName: "n"))
    var pageSize: UInt32 = QSEnv.value("QS_CTL_USAGE_PAGE_SIZE", UInt32(1000), flag: "--page-size")

    func validate() throws {
        guard !acl.isEmpty else { throw ValidationError("--acl is required: the qsrest ACL file (or set QS_CTL_USAGE_ACL)") }
        guard pageSize > 0 else { throw ValidationError("--page-size must be positive") }
    }

    func run() async throws {
        let list: ACL
        do {
            list = try ACL.load(path: acl)
        } catch {
            fail("\(error)")
            throw Exit.usage
        }
        let report = try await options.withClient { try await UsageReport.measure($0, acl: list, pageSize: pageSize) }
        var out = Output(output, listing: false)
        out.item(json: report.json, table: report.table)
        out.finish()
    }
}
