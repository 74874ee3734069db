import Foundation
import QSClient
import QSModel
import QSTesting
import QSWire
import XCTest

/// etcd's client port is a root cluster's control plane: whoever may write there may put
/// the cluster's role, forge a source's checkpoint or write log entries. With etcd's
/// authentication on, a member presents a user's token (`--etcd-user`,
/// `--etcd-password-file`) and renews it when etcd no longer knows it; a member without
/// credentials, or with a wrong password, says so instead of retrying blind.
final class ClusterAuthTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("cluster-auth")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    func testAMemberAuthenticatesToEtcdRenewsItsTokenAndNamesRefusedCredentials() async throws {
        let etcd = try EtcdCluster(size: 1, dir: tmp, logDir: tmp, extraArgs: ["--auth-token-ttl", "1"])
        defer { etcd.stop() }
        try etcd.addUser("qs-a", password: "a-secret", readWrite: "/qs/a/")
        let password = tmp.appendingPathComponent("etcd-password")
        try Data("a-secret\n".utf8).write(to: password)
        let credentials = ["--etcd-user", "qs-a", "--etcd-password-file", password.path]
        let args = ["--etcd", etcd.urls, "--cluster", "a", "--etcd-timeout", "3s", "--log-format", "text"]

        // etcd's authentication still off: the member works, and says the credentials are
        // not used and that etcd takes anyone's requests.
        let member = try RootNode(data: tmp.appendingPathComponent("m0"), logDir: tmp, extraArgs: args + credentials)
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { member.readyz()?.status == 200 }, member.daemon.log)
        let client = try await QSClient.connect(host: "127.0.0.1", port: member.port)
        _ = try await client.write([.set(key: Array("k1".utf8), value: Array("v1".utf8), expiry: nil)], sourceID: "t")
        XCTAssertEqual(member.metric("qs_cluster_etcd_open"), 1)
        XCTAssertTrue(member.daemon.log.contains("etcd's authentication is off"), member.daemon.log)

        // Turned on: the member's next requests are refused for want of a token, it
        // authenticates and goes on; a request without a token is refused by etcd.
        try etcd.enableAuthentication(rootPassword: "root-secret")
        let forged = try Harness.run("/usr/bin/curl", ["-s", "-X", "POST", "\(etcd.members[0].clientURL)/v3/kv/put",
                                                       "-d", #"{"key":"L3FzL2Evcm9sZQ==","value":"cHJvbW90ZWQ="}"#])
        XCTAssertTrue(String(decoding: forged.stdout, as: UTF8.self).contains("user name is empty"))
        _ = try await client.write([.set(key: Array("k2".utf8), value: Array("v2".utf8), expiry: nil)], sourceID: "t")
        let k2 = try await client.get(Array("k2".utf8))
        XCTAssertEqual(k2?.value, Array("v2".utf8))
        XCTAssertEqual(member.metric("qs_cluster_etcd_open"), 0)
        XCTAssertGreaterThanOrEqual(member.metric("qs_cluster_etcd_tokens_total") ?? 0, 1)

        // etcd forgets a token unused for --auth-token-ttl (1 s here; the member writes every
        // 2 s): each request that meets the refusal was not executed, and is sent again with
        // a new token, unseen by the writer and by the applier.
        let errors = member.metric("qs_cluster_etcd_errors_total")
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { (member.metric("qs_cluster_etcd_tokens_total") ?? 0) >= 3 }, member.daemon.log)
        _ = try await client.write([.set(key: Array("k3".utf8), value: Array("v3".utf8), expiry: nil)], sourceID: "t")
        let k3 = try await client.get(Array("k3".utf8))
        XCTAssertEqual(k3?.value, Array("v3".utf8))
        XCTAssertEqual(member.readyz()?.status, 200)
        XCTAssertEqual(member.metric("qs_cluster_etcd_errors_total"), errors, member.daemon.log)

        // The password changed in etcd, not yet in the file: writes are refused at once as
        // not committed, naming the credentials, and etcd is not asked to authenticate for
        // each of them (a bcrypt each: one member would load etcd for the whole cluster).
        try etcd.changePassword(of: "qs-a", to: "b-secret", rootPassword: "root-secret")
        var refused = 0
        for i in 0..<20 {
            do {
                _ = try await client.write([.set(key: Array("r\(i)".utf8), value: [1], expiry: nil)], sourceID: "t", attempts: 1)
            } catch let ClientError.server(code, message) {
                XCTAssertEqual(ErrorCode(rawValue: code), .storageError)
                XCTAssertTrue(message.contains("not committed") && message.contains("credentials"), message)
                refused += 1
            }
        }
        XCTAssertGreaterThanOrEqual(refused, 19, member.daemon.log)
        XCTAssertLessThanOrEqual(member.metric("qs_cluster_etcd_auth_refusals_total") ?? 99, 6, member.daemon.log)
        // Not ready from the member's next applied/ write (every 2 s), which etcd refuses too.
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(10)) { member.readyz()?.body.contains("credentials") == true },
                      "\(member.readyz().map { "\($0)" } ?? "no answer")")
        XCTAssertEqual(member.readyz()?.status, 503)
        let status = try Harness.run("qsctl", ["--node", member.address, "status"])
        let statusText = String(decoding: status.stdout, as: UTF8.self)
        XCTAssertTrue(statusText.contains("writes   FAILING") && statusText.contains("credentials"), statusText)
        // The new password in the file: taken at the next try, without a restart.
        try Data("b-secret\n".utf8).write(to: password)
        let recovered = await Harness.eventually(timeout: .seconds(40), pollEvery: .milliseconds(250)) {
            (try? await client.write([.set(key: Array("k4".utf8), value: Array("v4".utf8), expiry: nil)], sourceID: "t", attempts: 1)) != nil
        }
        XCTAssertTrue(recovered, member.daemon.log)
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(10)) { member.readyz()?.status == 200 }, member.daemon.log)
        await client.close()

        // A member without credentials: not ready, and /readyz names the flags to give.
        let bare = try RootNode(data: tmp.appendingPathComponent("m1"), logDir: tmp, extraArgs: args)
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { bare.readyz()?.body.contains("--etcd-user") == true },
                      "\(bare.readyz().map { "\($0)" } ?? "no answer")\n\(bare.daemon.log)")
        XCTAssertEqual(bare.readyz()?.status, 503)

        // A wrong password stops the start, naming the user and the flags.
        try Data("not-it".utf8).write(to: password)
        let wrong = try DaemonProcess("qsnode", ["--role", "root", "--data", tmp.appendingPathComponent("m2").path,
                                                 "--listen", "127.0.0.1:0"] + args + credentials, logDir: tmp)
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { !wrong.isRunning }, wrong.log)
        XCTAssertNotEqual(wrong.process.terminationStatus, 0)
        XCTAssertTrue(wrong.log.contains("--etcd-user qs-a") && wrong.log.contains("--etcd-password-file"), wrong.log)
    }
}
