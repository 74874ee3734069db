import ArgumentParser
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import QSDaemon
import QSNet

/// `qsctl rebootstrap`: the operator's explicit action that replaces a replica's store with
/// another node's snapshot, whatever its history (a replica never does it by itself).
struct Rebootstrap: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Replace a replica's whole store with another node's snapshot, whatever its history.",
        discussion: """
            A replica never trades its history away by itself: it refuses a snapshot whose log \
            does not contain its own head (counted in qs_replica_diverged_total). This is the \
            explicit action that does it: POST /rebootstrap on the replica's admin port, with \
            the admin token (--admin-token-file); the replica logs it, installs FROM's snapshot \
            within seconds and counts it in qs_replica_rebootstraps_total. If FROM is not in \
            the replica's upstream list, move the replica there too (POST /upstream).
            """)

    @Option(help: ArgumentHelp("The replica's admin address, HOST:PORT. (env: QS_CTL_REBOOTSTRAP_ADMIN)", valueName: "host:port"))
    var admin: TCPAddress = QSEnv.value("QS_CTL_REBOOTSTRAP_ADMIN", TCPAddress(host: "127.0.0.1", port: 9400), flag: "--admin")

    @Option(help: ArgumentHelp("The node whose snapshot replaces the replica's store, HOST:PORT or unix:PATH. (env: QS_CTL_REBOOTSTRAP_FROM)", valueName: "host:port"))
    var from: String = QSEnv.string("QS_CTL_REBOOTSTRAP_FROM") ?? ""

    @ParentCommand var parent: Qsctl

    func validate() throws {
        guard !from.isEmpty else { throw ValidationError("--from HOST:PORT is required: the node whose snapshot replaces the replica's store") }
        guard Address(argument: from) != nil else { throw ValidationError("--from '\(from)' is not HOST:PORT or unix:PATH") }
    }

    func run() async throws {
        guard let from = Address(argument: from), let url = URL(string: "http://\(admin)/rebootstrap") else { throw Exit.usage }
        // qsctl's --admin-token-file (QS_CTL_ADMIN_TOKEN_FILE), as for promote and demote.
        let token = try parent.options.adminToken() ?? []
        var request = URLRequest(url: url)
        request.httpMethod = "POST"
        request.httpBody = Data("\(from)".utf8)
        request.setValue("text/plain", forHTTPHeaderField: "Content-Type")
        if !token.isEmpty { request.setValue("Bearer " + String(decoding: token, as: UTF8.self), forHTTPHeaderField: "Authorization") }
        let data: Data
        let response: URLResponse
        do {
            (data, response) = try await URLSession.shared.data(for: request)
        } catch {
            fail("no answer from \(url): \(error)")
            throw Exit.serverError
        }
        let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard let status = (response as? HTTPURLResponse)?.statusCode, status == 200 else {
            fail("\(url) refused: \(text)")
            throw Exit.serverError
        }
        printLine(text)
    }
}
