import Foundation
import QSClient
import QSModel
import QSTesting
import QSWire
import XCTest

/// Replication, admin actions and binding beyond loopback need their tokens.
final class AccessTokenTests: XCTestCase {
    var tmp: URL!
    static let replicationToken = "replication-token-0123456789"
    static let adminToken = "admin-token-0123456789abcdef"

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("tokens")
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: tmp)
    }

    func file(_ name: String, _ text: String) throws -> String {
        let url = tmp.appendingPathComponent(name)
        try (text + "\n").write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }

    func testAReplicaWithoutTheReplicationTokenIsRefusedCountedAndLogged() async throws {
        let token = try file("replication", Self.replicationToken)
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp, extraArgs: ["--replication-token-file", token])
        let c = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        _ = try await c.write([.set(key: Array("k".utf8), value: Array("v".utf8), expiry: nil)], sourceID: "t")
        let head = try await c.head()
        await c.close()

        let stranger = try ReplicaNode(data: tmp.appendingPathComponent("stranger"), upstreams: [root.address], logDir: tmp)
        let wrong = try file("wrong", "not-the-replication-token")
        let impostor = try ReplicaNode(data: tmp.appendingPathComponent("impostor"), upstreams: [root.address], logDir: tmp,
                                       extraArgs: ["--upstream-token-file", wrong])
        let refused = await Harness.eventually(timeout: .seconds(15)) {
            (root.metric("qs_auth_failures_total{interface=\"replication\"}") ?? 0) >= 2
        }
        XCTAssertTrue(refused, "two refusals counted; root log:\n\(root.daemon.log)")
        XCTAssertTrue(root.daemon.log.contains("replication refused"), root.daemon.log)
        XCTAssertTrue(root.daemon.log.contains("\"peer\":\"127.0.0.1:"), "the refusal names the peer")
        XCTAssertEqual(root.metric("qs_auth_failures_total{interface=\"write\"}"), 0)
        // The root counts a refusal before the replica has read and logged it.
        let strangerLogged = await Harness.eventually(timeout: .seconds(5)) { stranger.daemon.log.contains("missing replication token") }
        XCTAssertTrue(strangerLogged, stranger.daemon.log)
        let impostorLogged = await Harness.eventually(timeout: .seconds(5)) { impostor.daemon.log.contains("wrong replication token") }
        XCTAssertTrue(impostorLogged, impostor.daemon.log)
        XCTAssertEqual(stranger.metric("qs_replica_head_index") ?? 0, 0, "nothing replicated without the token")
        XCTAssertEqual(httpGet(port: stranger.adminPort, path: "/readyz")?.status, 503)

        let member = try ReplicaNode(data: tmp.appendingPathComponent("member"), upstreams: [root.address], logDir: tmp,
                                     extraArgs: ["--upstream-token-file", token])
        let caughtUp = await Harness.eventually(timeout: .seconds(15)) { member.metric("qs_replica_head_index") == Double(head.index) }
        XCTAssertTrue(caughtUp, "the replica holding the token bootstraps and follows; log:\n\(member.daemon.log)")

        // qsctl record presents the token too; without it the subscription is refused.
        let out = tmp.appendingPathComponent("feed.qscap").path
        let bare = try Harness.run("qsctl", ["record", "--source", "qs://\(root.address)", "--out", out, "--from", "0", "--count", "1",
                                             "--duration", "10s"])
        XCTAssertNotEqual(bare.status, 0, "a recording without the token fails")
        XCTAssertTrue(String(decoding: bare.stderr, as: UTF8.self).contains("replication token"), String(decoding: bare.stderr, as: UTF8.self))
        let good = try Harness.run("qsctl", ["record", "--source", "qs://\(root.address)", "--out", out, "--from", "0", "--count", "1",
                                             "--source-token-file", token, "--output", "json"])
        XCTAssertEqual(good.status, 0, String(decoding: good.stderr, as: UTF8.self))
        let meta = try JSONSerialization.jsonObject(with: good.stdout) as? [String: Any]
        XCTAssertEqual(meta?["updates"] as? Int, 1)
    }

    func testAdminActionsNeedTheAdminTokenAndAreCounted() throws {
        let admin = try file("admin", Self.adminToken)
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let replica = try ReplicaNode(data: tmp.appendingPathComponent("replica"), upstreams: [root.address], logDir: tmp,
                                      extraArgs: ["--admin-token-file", admin])
        let body = Array(root.address.utf8)
        let bare = httpPost(port: replica.adminPort, path: "/upstream", contentType: "text/plain", body: body)
        XCTAssertEqual(bare?.status, 401, bare?.body ?? "no answer")
        XCTAssertTrue(bare?.body.contains("missing admin token") == true, bare?.body ?? "")
        let wrong = adminPost(replica.adminPort, "/upstream", body, bearer: "admin-token-0123456789abcdeX")
        XCTAssertEqual(wrong?.status, 401)
        XCTAssertEqual(replica.metric("qs_auth_failures_total{interface=\"admin\"}"), 2)
        XCTAssertTrue(replica.daemon.log.contains("admin refused"), replica.daemon.log)
        let good = adminPost(replica.adminPort, "/upstream", body, bearer: Self.adminToken)
        XCTAssertEqual(good?.status, 200, good?.body ?? "no answer")
        XCTAssertEqual(httpGet(port: replica.adminPort, path: "/metrics")?.status, 200, "reads of the admin port need no token")
    }

    func testBindingBeyondLoopbackWithoutATokenIsRefused() throws {
        let data = tmp.appendingPathComponent("n").path
        var r = try Harness.run("qsnode", ["--data", data, "--listen", "0.0.0.0:0"])
        var err = String(decoding: r.stderr, as: UTF8.self)
        XCTAssertEqual(r.status, 64, err)
        XCTAssertTrue(err.contains("--replication-token-file"), err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: data + "/data.mdb"), "refused before opening the store")

        // A root's writes likewise: a root beyond loopback needs a write token.
        let replicationOnly = try file("replication", Self.replicationToken)
        r = try Harness.run("qsnode", ["--data", data, "--listen", "0.0.0.0:0", "--replication-token-file", replicationOnly])
        err = String(decoding: r.stderr, as: UTF8.self)
        XCTAssertEqual(r.status, 64, err)
        XCTAssertTrue(err.contains("no --write-token-file is set: anyone who reaches this root could write to it"), err)

        r = try Harness.run("qsnode", ["--data", data, "--admin", "0.0.0.0:0"])
        err = String(decoding: r.stderr, as: UTF8.self)
        XCTAssertEqual(r.status, 64, err)
        XCTAssertTrue(err.contains("--admin-token-file"), err)

        r = try Harness.run("qsktbridge", ["--source", "ulog:\(tmp.path)", "--admin", "0.0.0.0:0"])
        err = String(decoding: r.stderr, as: UTF8.self)
        XCTAssertEqual(r.status, 64, err)
        XCTAssertTrue(err.contains("--admin-token-file"), err)

        // With the tokens it starts on every address.
        let replication = replicationOnly, admin = try file("admin", Self.adminToken), write = try file("write", "write-token-0123456789abcdef")
        let node = try DaemonProcess("qsnode", ["--data", data, "--listen", "0.0.0.0:0", "--admin", "0.0.0.0:0",
                                                "--replication-token-file", replication, "--admin-token-file", admin, "--write-token-file", write],
                                     logDir: tmp, ready: true)
        XCTAssertEqual(httpGet(port: try node.port("admin"), path: "/healthz")?.status, 200)
        XCTAssertEqual(try node.stop(), 0)
    }

    /// POST with `Authorization: Bearer TOKEN`.
    func adminPost(_ port: Int, _ path: String, _ body: [UInt8], bearer: String) -> (status: Int, body: String)? {
        httpPost(port: port, path: path, contentType: "text/plain", body: body, headers: [("Authorization", "Bearer \(bearer)")])
    }
}
