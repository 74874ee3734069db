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
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
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

        // Empty replicas: refused, they keep asking with their store closed (no ready file:
        // only the admin port, a Unix socket here, is up).
        func emptyReplica(_ name: String, _ extra: [String] = []) throws -> (daemon: DaemonProcess, admin: String) {
            let admin = tmp.appendingPathComponent("\(name).sock").path
            let d = try DaemonProcess("qsnode", ["--role", "replica", "--data", tmp.appendingPathComponent(name).path, "--listen", "127.0.0.1:0",
                                                 "--upstream", root.address, "--admin", "unix:" + admin, "--log-format", "text"] + extra, logDir: tmp)
            return (d, admin)
        }
        let stranger = try emptyReplica("stranger")
        let wrong = try file("wrong", "not-the-replication-token")
        let impostor = try emptyReplica("impostor", ["--upstream-token-file", wrong])
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
        XCTAssertFalse(FileManager.default.fileExists(atPath: tmp.appendingPathComponent("stranger/data.mdb").path), "nothing replicated without the token")
        let ready = httpRequest(unixPath: stranger.admin, path: "/readyz")
        XCTAssertEqual(ready?.status, 503)
        XCTAssertTrue(ready?.body.contains("missing replication token") ?? false, ready?.body ?? "no answer")

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

    /// A node beyond loopback answers reads from another machine (qsctl, a replica's head
    /// reads, a mirror bridge reading the source's log) only on connections that presented
    /// one of its tokens; each tool presents the token it holds, and says which flag to give
    /// when it holds none.
    func testReadsFromAnotherMachinePresentATokenAndAreRefusedWithout() async throws {
        if let why = NetworkNamespace.unavailable { throw XCTSkip(why) }
        let ns = try NetworkNamespace()
        defer { ns.close() }
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp, namespace: ns)
        let token = try file("token", String(decoding: root.token, as: UTF8.self)), wrong = try file("wrong", "not-a-token-of-this-node")
        func qsctl(_ args: [String], env: [String: String] = [:]) throws -> (status: Int32, out: String, err: String) {
            let r = try Harness.run("qsctl", ["--node", root.address] + args, env: env)
            return (r.status, String(decoding: r.stdout, as: UTF8.self), String(decoding: r.stderr, as: UTF8.self))
        }
        func readRefusals() -> Double {
            root.metric("qs_auth_failures_total{interface=\"read\"}") ?? -1
        }
        var r = try qsctl(["--write-token-file", token, "put", "k", "v1"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(readRefusals(), 0, "a writer's token lets its connection read")

        r = try qsctl(["get", "k"])
        XCTAssertEqual(r.status, 3, "a read from another machine without a token: \(r)")
        XCTAssertTrue(r.err.contains("--read-token-file"), r.err)
        XCTAssertEqual(readRefusals(), 1)
        r = try qsctl(["--read-token-file", wrong, "status"])
        XCTAssertEqual(r.status, 3, "\(r)")
        XCTAssertTrue(r.err.contains("refused the token qsctl presented to read (--read-token-file)") && r.err.contains("wrong read token"), r.err)
        XCTAssertEqual(readRefusals(), 2)
        r = try qsctl(["--read-token-file", token, "get", "k"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(r.out, "v1")
        r = try qsctl(["get", "k"], env: ["QS_CTL_READ_TOKEN_FILE": token])
        XCTAssertEqual(r.status, 0, r.err)
        r = try qsctl(["--admin-token-file", token, "head"])
        XCTAssertEqual(r.status, 0, "the admin token reads too: \(r)")
        XCTAssertTrue(root.daemon.log.contains("read refused"), root.daemon.log)

        // Through a loopback forwarder (ssh -L, kubectl port-forward) the node sees a peer
        // on another machine: the token goes whatever address was dialled.
        let forwarder = try FaultProxy(upstreamHost: ns.address, upstreamPort: root.port)
        defer { forwarder.close() }
        let forwarded = try Harness.run("qsctl", ["--node", "127.0.0.1:\(forwarder.port)", "--read-token-file", token, "get", "k"])
        XCTAssertEqual(forwarded.status, 0, String(decoding: forwarded.stderr, as: UTF8.self))

        // A replica on the host follows with its replication token (its head reads present it).
        let replica = try ReplicaNode(data: tmp.appendingPathComponent("replica"), upstreams: [root.address], logDir: tmp,
                                      extraArgs: ["--upstream-token-file", token])
        let followed = await Harness.eventually(timeout: .seconds(20)) {
            replica.metric("qs_replica_head_index") == 1
        }
        XCTAssertTrue(followed, "replica log:\n\(replica.daemon.log)")
        // verify reads both nodes with the token it has (the replica, local, needs none);
        // without one, the refusal names the node that refused.
        var v = try Harness.run("qsctl", ["--node", replica.address, "--write-token-file", token, "verify", "--against", root.address])
        XCTAssertEqual(v.status, 0, String(decoding: v.stdout + v.stderr, as: UTF8.self))
        v = try Harness.run("qsctl", ["--node", replica.address, "verify", "--against", root.address])
        XCTAssertEqual(v.status, 3)
        XCTAssertTrue(String(decoding: v.stderr, as: UTF8.self).contains("this node (\(root.address))"), String(decoding: v.stderr, as: UTF8.self))
        // Two nodes of different tokens: the other's is given on its own (the replica, local,
        // takes any; the root refuses the read token given for --node).
        v = try Harness.run("qsctl", ["--node", replica.address, "--read-token-file", wrong, "verify", "--against", root.address])
        XCTAssertEqual(v.status, 3)
        XCTAssertTrue(String(decoding: v.stderr, as: UTF8.self).contains("(--read-token-file)"), String(decoding: v.stderr, as: UTF8.self))
        v = try Harness.run("qsctl", ["--node", replica.address, "--read-token-file", wrong, "verify", "--against", root.address,
                                      "--against-token-file", token])
        XCTAssertEqual(v.status, 0, String(decoding: v.stdout + v.stderr, as: UTF8.self))
        v = try Harness.run("qsctl", ["--node", replica.address, "verify", "--against", root.address, "--against-token-file", wrong])
        XCTAssertEqual(v.status, 3)
        XCTAssertTrue(String(decoding: v.stderr, as: UTF8.self).contains("(--against-token-file)"), String(decoding: v.stderr, as: UTF8.self))
        v = try Harness.run("qsctl", ["--node", replica.address, "wait", "--head-of", root.address, "--timeout", "20s"],
                            env: ["QS_CTL_WAIT_HEAD_OF_TOKEN_FILE": token])
        XCTAssertEqual(v.status, 0, String(decoding: v.stdout + v.stderr, as: UTF8.self))

        // A batched mirror bridge reads the source's log with --source-token-file; without
        // it, it stops at once saying so.
        let target = try RootNode(data: tmp.appendingPathComponent("target"), logDir: tmp)
        let bare = try Harness.run("qsqsbridge", ["--source", "qs://\(root.address)", "--root", target.address, "--mode", "batched", "--once"])
        let bareErr = String(decoding: bare.stderr, as: UTF8.self)
        XCTAssertNotEqual(bare.status, 0, bareErr)
        XCTAssertTrue(bareErr.contains("--source-token-file"), bareErr)
        let mirrored = try Harness.run("qsqsbridge", ["--source", "qs://\(root.address)", "--root", target.address, "--mode", "batched", "--once",
                                                      "--source-token-file", token])
        XCTAssertEqual(mirrored.status, 0, String(decoding: mirrored.stderr, as: UTF8.self))
        let c = try await QSClient.connect(host: "127.0.0.1", port: target.port)
        let copied = try await c.get(Array("k".utf8))
        await c.close()
        XCTAssertEqual(copied?.value, Array("v1".utf8))
    }

    /// A writer given several roots reads the others before writing (which holds its
    /// source's checkpoint, whose head is ahead): across machines those reads present its
    /// write token, so an empty root listed first is still passed over, not written the
    /// whole source.
    func testAWriterReadsTheOtherListedRootsWithItsToken() async throws {
        if let why = NetworkNamespace.unavailable { throw XCTSkip(why) }
        let ns = try NetworkNamespace()
        defer { ns.close() }
        let old = try RootNode(data: tmp.appendingPathComponent("old"), logDir: tmp, namespace: ns)
        let token = try file("token", String(decoding: old.token, as: UTF8.self))
        let new = try DaemonProcess("qsnode", ["--role", "root", "--data", tmp.appendingPathComponent("new").path, "--listen", "\(ns.address):0",
                                               "--admin", "\(ns.address):0", "--write-token-file", token, "--replication-token-file", token,
                                               "--admin-token-file", token], logDir: tmp, ready: true, launcher: ns.launcher)
        let newAddress = "\(ns.address):\(try new.port("write"))"
        let source = try RootNode(data: tmp.appendingPathComponent("source"), logDir: tmp)
        let sc = try await QSClient.connect(host: "127.0.0.1", port: source.port)
        _ = try await sc.write([.set(key: Array("a".utf8), value: Array("1".utf8), expiry: nil)], sourceID: "w")
        func bridge(_ roots: String) throws -> (Int32, String) {
            let r = try Harness.run("qsqsbridge", ["--source", "qs://\(source.address)", "--root", roots, "--write-token-file", token,
                                                   "--mode", "batched", "--source-id", "S", "--once", "--log-format", "text"])
            return (r.status, String(decoding: r.stdout + r.stderr, as: UTF8.self))
        }
        var run = try bridge(old.address)
        XCTAssertEqual(run.0, 0, run.1)
        _ = try await sc.write([.set(key: Array("b".utf8), value: Array("2".utf8), expiry: nil)], sourceID: "w")
        run = try bridge("\(newAddress),\(old.address)")
        XCTAssertEqual(run.0, 0, run.1)
        XCTAssertTrue(run.1.contains("holds no checkpoint of source id S"), run.1)
        let oc = try await QSClient.connect(host: ns.address, port: old.port, token: old.token)
        let nc = try await QSClient.connect(host: ns.address, port: try new.port("write"), token: old.token)
        let atOld = try await oc.checkpoint(sourceID: "S"), atNew = try await nc.checkpoint(sourceID: "S")
        XCTAssertEqual(atOld, 2, "the root that holds the source goes on")
        XCTAssertNil(atNew, "the empty root listed first is passed over")

        // A replica listed in --root (it refuses the write token: its own tokens differ): a
        // new source id is not held up by it, before or after the root.
        let own = try file("replica-token", "replica-token-0123456789abcdef")
        let replica = try DaemonProcess("qsnode", ["--role", "replica", "--data", tmp.appendingPathComponent("replica").path,
                                                   "--upstream", old.address, "--upstream-token-file", token,
                                                   "--listen", "\(ns.address):0", "--admin", "\(ns.address):0",
                                                   "--replication-token-file", own, "--admin-token-file", own],
                                       logDir: tmp, ready: true, launcher: ns.launcher)
        let replicaAddress = "\(ns.address):\(try replica.port("write"))"
        for (id, roots) in [("R1", "\(replicaAddress),\(old.address)"), ("R2", "\(old.address),\(replicaAddress)")] {
            let r = try Harness.run("qsqsbridge", ["--source", "qs://\(source.address)", "--root", roots, "--write-token-file", token,
                                                   "--mode", "batched", "--source-id", id, "--once", "--log-format", "text"], killAfter: .seconds(60))
            XCTAssertEqual(r.status, 0, "--root \(roots): " + String(decoding: r.stdout + r.stderr, as: UTF8.self))
            let cp = try await oc.checkpoint(sourceID: id)
            XCTAssertEqual(cp, 2, "source id \(id) written to the root")
        }
        await oc.close(); await nc.close(); await sc.close()
    }

    /// POST with `Authorization: Bearer TOKEN`.
    func adminPost(_ port: Int, _ path: String, _ body: [UInt8], bearer: String) -> (status: Int, body: String)? {
        httpPost(port: port, path: path, contentType: "text/plain", body: body, headers: [("Authorization", "Bearer \(bearer)")])
    }
}
