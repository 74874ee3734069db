import ArgumentParser
import Foundation
import QSDaemon
import QSStore

/// `qsnode check --data DIR`: verifies a store without serving it (the log's whole hash
/// chain, every record against its checksum, the checkpoints) and says what is wrong in
/// words. Read-only: it can run beside the node that owns the directory.
struct QSNodeCheck: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qsnode check",
        abstract: "Verify a node's store: the log's hash chain, every record's checksum, the checkpoints.",
        discussion: """
            Opens the store read-only (it may run beside the node that owns it) and prints what \
            it checked and every problem found, in words. Exit codes: 0 sound; 1 damaged or \
            unreadable (the message says what and what to do); 64 usage.
            """)

    @Option(help: ArgumentHelp("Directory of the node's store (LMDB or RocksDB, found by its files). (env: QS_DATA)", valueName: "dir"))
    var data: String = QSEnv.string("QS_DATA") ?? ""

    @Option(help: ArgumentHelp("Damaged records listed one by one; the rest are counted. (env: QS_CHECK_LIST)", valueName: "n"))
    var list: Int = QSEnv.value("QS_CHECK_LIST", 20)

    func validate() throws {
        guard !data.isEmpty else { throw ValidationError("--data is required: the directory of the node's store (or set QS_DATA)") }
        guard FileManager.default.fileExists(atPath: data + "/data.mdb") else {
            throw ValidationError("--data \(data) holds no store (no data.mdb)")
        }
        guard list >= 0 else { throw ValidationError("--list must be 0 or more") }
    }

    func run() async throws {
        let report: StoreCheckReport
        do {
            let store = try await Store.open(directory: data, readOnly: true, readers: 1)
            report = try await store.check(maxListed: list)
        } catch {
            print("\(data): cannot be checked: \(error)")
            throw ExitCode(1)
        }
        print("\(data): format \(report.format); \(report.logEntriesChecked) log entries, \(report.recordsChecked) records, \(report.checkpointsChecked) checkpoints checked")
        guard !report.sound else {
            print("sound: the log's hash chain, every record's checksum and the checkpoints hold")
            return
        }
        for problem in report.problems { print("problem: \(problem)") }
        if report.moreDamagedRecords > 0 { print("problem: \(report.moreDamagedRecords) more damaged records (--list to see more)") }
        print("damaged: \(report.problems.count + report.moreDamagedRecords) problems. A replica repairs itself from its upstream (or: qsctl rebootstrap); a root must be restored from a copy")
        throw ExitCode(1)
    }
}
