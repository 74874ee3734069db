import Foundation
import QSNet
import QSTesting
import XCTest

/// `qsctl` and the service layer, as a user runs them.
final class QsctlTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("qsctl")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    func qsctl(_ node: RootNode, _ args: [String], env: [String: String] = [:]) throws -> (Int32, String, String) {
        try qsctl(node.address, args, env: env)
    }

    func qsctl(_ address: String, _ args: [String], env: [String: String] = [:]) throws -> (Int32, String, String) {
        let r = try Harness.run("qsctl", ["--node", address] + args, env: env)
        return (r.status, String(decoding: r.stdout, as: UTF8.self), String(decoding: r.stderr, as: UTF8.self))
    }

    func testCommandsAndExitCodes() throws {
        // The purge would delete "gone" (expired) as log entry 5: this test counts entries.
        let node = try RootNode(data: tmp.appendingPathComponent("data"), logDir: tmp, extraArgs: ["--expiry-purge-batch", "0"])
        XCTAssertEqual(try qsctl(node, ["put", "alpha", "one"]).0, 0)
        XCTAssertEqual(try qsctl(node, ["put", "beta", "two", "--expires", "4102444800"]).0, 0)
        XCTAssertEqual(try qsctl(node, ["put", "gone", "x", "--expires", "1000"]).0, 0)
        let long = String(repeating: "k", count: 2000)
        XCTAssertEqual(try qsctl(node, ["put", long, "long-key-value"]).0, 0)

        var r = try qsctl(node, ["get", "alpha"])
        XCTAssertEqual(r.0, 0)
        XCTAssertEqual(r.1, "one")
        r = try qsctl(node, ["get", long])
        XCTAssertEqual(r.1, "long-key-value")
        r = try qsctl(node, ["get", "gone"])
        XCTAssertEqual(r.0, 1, "expired records are not found")
        r = try qsctl(node, ["get", "missing"])
        XCTAssertEqual(r.0, 1)
        XCTAssertTrue(r.2.contains("not found"))
        XCTAssertEqual(try qsctl(node, ["get"]).0, 2, "usage error")
        XCTAssertEqual(try qsctl(node, ["frobnicate"]).0, 2)
        XCTAssertEqual(try Harness.run("qsctl", ["--node", "nonsense", "head"]).status, 2)
        let refusing = try RefusingPort()
        defer { refusing.close() }
        XCTAssertEqual(try Harness.run("qsctl", ["--node", refusing.address, "head"]).status, 3, "unreachable node")

        r = try qsctl(node, ["head"])
        XCTAssertEqual(r.0, 0)
        XCTAssertTrue(r.1.hasPrefix("{\"index\":4,\"hash\":\""), r.1)
        r = try qsctl(node, ["checkpoint", "qsctl"])
        XCTAssertEqual(r.1, "4\n")
        XCTAssertEqual(try qsctl(node, ["checkpoint", "nobody"]).0, 1)

        r = try qsctl(node, ["log", "--from", "2", "--count", "2"])
        let lines = r.1.split(separator: "\n")
        XCTAssertEqual(lines.count, 2)
        let first = try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as! [String: Any]
        XCTAssertEqual(first["index"] as? Int, 2)
        XCTAssertEqual(first["source_id"] as? String, "qsctl")
        let ops = first["ops"] as! [[String: Any]]
        XCTAssertEqual(ops[0]["key"] as? String, Data("beta".utf8).base64EncodedString())
        XCTAssertEqual(ops[0]["xt"] as? Int, 4102444800)

        r = try qsctl(node, ["dump", "--output", "jsonl"])
        XCTAssertEqual(r.0, 0)
        let dumped = r.1.split(separator: "\n").map { try! JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        let keys = dumped.map { String(decoding: Data(base64Encoded: $0["key"] as! String)!, as: UTF8.self) }
        XCTAssertEqual(Set(keys), ["alpha", "beta", long])
        let beta = dumped.first { ($0["key"] as! String) == Data("beta".utf8).base64EncodedString() }!
        XCTAssertEqual(beta["xt"] as? Int, 4102444800)
        XCTAssertTrue(dumped.first { ($0["key"] as! String) == Data("alpha".utf8).base64EncodedString() }!["xt"] is NSNull)
        // Judged at an earlier instant, the expired record is live.
        r = try qsctl(node, ["dump", "--at", "999"])
        XCTAssertEqual(r.1.split(separator: "\n").count, 4)

        XCTAssertEqual(try qsctl(node, ["delete", "alpha"]).0, 0)
        XCTAssertEqual(try qsctl(node, ["delete", "alpha"]).0, 1)
        // Binary keys through --base64.
        XCTAssertEqual(try qsctl(node, ["--base64", "put", "AAEC/w==", "CQoN"]).0, 0)
        r = try qsctl(node, ["--base64", "get", "AAEC/w==", "--output", "json"])
        XCTAssertEqual(r.1, "{\"key\":\"AAEC/w==\",\"value\":\"CQoN\",\"xt\":null}\n")
        // A value too large for a command line, from a file and from standard input.
        let big = Data((0..<(2 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        let file = tmp.appendingPathComponent("value")
        try big.write(to: file)
        XCTAssertEqual(try qsctl(node, ["put", "big", "--value-file", file.path]).0, 0)
        let stdin = try Harness.run("qsctl", ["--node", node.address, "put", "piped", "--value-file", "-"], stdin: Data("from stdin".utf8))
        XCTAssertEqual(stdin.status, 0, String(decoding: stdin.stderr, as: UTF8.self))
        let both = try qsctl(node, ["put", "k", "v", "--value-file", file.path])
        XCTAssertEqual(both.0, 2)
        XCTAssertTrue(both.2.contains("not both"), both.2)
        let none = try qsctl(node, ["put", "k"])
        XCTAssertEqual(none.0, 2)
        XCTAssertTrue(none.2.contains("--value-file FILE"), none.2)
        for (key, value) in [("big", big), ("piped", Data("from stdin".utf8))] {
            let got = try qsctl(node, ["--base64", "get", Data(key.utf8).base64EncodedString(), "--output", "json"])
            let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(got.1.utf8)) as? [String: Any])
            XCTAssertEqual((json["value"] as? String).flatMap { Data(base64Encoded: $0) }, value, key)
        }
    }

    /// Once producers write through qsrest, KT's copy of their keys is stale by design and
    /// `verify --kt` listed them for ever (the runbook's section 5 went red for good):
    /// `--exclude-acl` leaves the ACL's producers' prefixes out on both sides, nothing else.
    func testVerifyKTLeavesOutTheProducersOfAnACL() throws {
        let kt = try FakeKTProcess(logDir: tmp)
        let node = try RootNode(data: tmp.appendingPathComponent("data"), logDir: tmp)
        kt.set("shared", "1")
        kt.set("dns/old", "kt-only")          // stale in KT: the producer moved
        XCTAssertEqual(try qsctl(node, ["put", "shared", "1"]).0, 0)
        XCTAssertEqual(try qsctl(node, ["put", "dns/new", "qs-only"]).0, 0)  // written through qsrest
        let acl = tmp.appendingPathComponent("acl.toml")
        try Data("[producers.dns]\ntoken_sha256 = \"\(String(repeating: "ab", count: 32))\"\nprefixes = [\"dns/\"]\n".utf8).write(to: acl)

        var r = try qsctl(node, ["verify", "--kt", kt.address, "--db-map", "0="])
        XCTAssertEqual(r.0, 1, r.2)
        XCTAssertTrue(r.1.contains("dns/old") && r.1.contains("dns/new"), r.1)
        r = try qsctl(node, ["verify", "--kt", kt.address, "--db-map", "0=", "--exclude-acl", acl.path])
        XCTAssertEqual(r.0, 0, r.1 + r.2)
        XCTAssertTrue(r.2.contains("checked 1 KT records; 0 differences; 1 KT records under the producers' prefixes"), r.2)
        // Anything else still counts.
        kt.set("other", "kt-only")
        r = try qsctl(node, ["verify", "--kt", kt.address, "--db-map", "0="], env: ["QS_CTL_VERIFY_EXCLUDE_ACL": acl.path])
        XCTAssertEqual(r.0, 1, r.2)
        XCTAssertTrue(r.1.contains("other") && !r.1.contains("dns/"), r.1)
        // A file that is not there is a usage error naming it; with --against it is refused.
        r = try qsctl(node, ["verify", "--kt", kt.address, "--exclude-acl", tmp.appendingPathComponent("nope").path])
        XCTAssertEqual(r.0, 2, r.2)
        XCTAssertTrue(r.2.contains("nope: no such file"), r.2)
        XCTAssertEqual(try qsctl(node, ["verify", "--against", node.address, "--exclude-acl", acl.path]).0, 2)
    }

    /// `cutover --to` a replica told the operator to point a mirror bridge at the replica,
    /// which takes no writes: it now says to start a root and mirror into that.
    func testCutoverToAReplicaSaysWhatCanTakeOver() throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        XCTAssertEqual(try qsctl(root, ["put", "k", "v"]).0, 0)
        let replica = try ReplicaNode(data: tmp.appendingPathComponent("r"), upstreams: [root.address], logDir: tmp)
        let r = try Harness.run("qsctl", ["cutover", "--from", root.address, "--to", replica.address, "--timeout", "5s"])
        let err = String(decoding: r.stderr, as: UTF8.self)
        XCTAssertEqual(r.status, 2, err)
        XCTAssertTrue(err.contains("is a replica") && err.contains("qsnode --role root") && !err.contains("--root \(replica.address)"), err)
        XCTAssertEqual(try qsctl(root, ["put", "k2", "v"]).0, 0, "the root still takes writes: nothing changed")
    }

    /// `qsctl wait --head-of OTHER`: a bounded wait for "N holds L's head" (the runbook's
    /// sections 1, 7 and 8 looped on `qsctl head` without a deadline). A copy gets there; a
    /// node nothing feeds times out (5); a root of another history is told at once (1).
    func testWaitForAnotherNodesHead() throws {
        let a = try RootNode(data: tmp.appendingPathComponent("a"), logDir: tmp)
        let other = try RootNode(data: tmp.appendingPathComponent("b"), logDir: tmp)
        for i in 0..<3 {
            XCTAssertEqual(try qsctl(a, ["put", "k\(i)", "a\(i)"]).0, 0)
            XCTAssertEqual(try qsctl(other, ["put", "k\(i)", "b\(i)"]).0, 0)
        }
        let replica = try ReplicaNode(data: tmp.appendingPathComponent("r"), upstreams: [a.address], logDir: tmp)
        var r = try qsctl(replica.address, ["wait", "--head-of", a.address, "--timeout", "30s"])
        XCTAssertEqual(r.0, 0, r.2)
        XCTAssertTrue(r.1.contains("holds \(a.address)'s head: index 3"), r.1)

        // Same index, another hash: another history, said at once rather than at the timeout.
        r = try qsctl(other, ["wait", "--head-of", a.address, "--timeout", "60s"])
        XCTAssertEqual(r.0, 1, r.2)
        XCTAssertTrue(r.2.contains("another history"), r.2)
        // Behind, and of another history: said at once too.
        XCTAssertEqual(try qsctl(a, ["put", "k3", "a3"]).0, 0)
        XCTAssertEqual(try qsctl(a, ["put", "k4", "a4"]).0, 0)
        r = try qsctl(other, ["wait", "--head-of", a.address, "--timeout", "60s"])
        XCTAssertEqual(r.0, 1, r.2)
        XCTAssertTrue(r.2.contains("another history"), r.2)
        // A copy behind that nothing feeds: exit 5 at the timeout, saying so.
        let stopped = try RootNode(data: tmp.appendingPathComponent("c"), logDir: tmp)
        let copy = try Harness.run("qsqsbridge", ["--source", "qs://\(a.address)", "--root", stopped.address, "--mode", "compatible", "--once"],
                                   killAfter: .seconds(60))
        XCTAssertEqual(copy.status, 0, String(decoding: copy.stderr, as: UTF8.self))
        XCTAssertEqual(try qsctl(a, ["put", "k5", "a5"]).0, 0)
        r = try qsctl(stopped, ["wait", "--head-of", a.address, "--timeout", "300ms"])
        XCTAssertEqual(r.0, 5, r.2)
        XCTAssertTrue(r.2.contains("has not reached \(a.address)'s head (index 6)"), r.2)
        // Past the head with another entry there: another history too.
        for i in 3..<8 { XCTAssertEqual(try qsctl(other, ["put", "k\(i)", "b\(i)"]).0, 0) }
        r = try qsctl(other, ["wait", "--head-of", a.address, "--timeout", "60s", "--output", "json"])
        XCTAssertEqual(r.0, 1, r.2)
        // The replica follows: it holds the new head too (its own may be further).
        r = try qsctl(replica.address, ["wait", "--head-of", a.address, "--timeout", "30s", "--output", "json"])
        XCTAssertEqual(r.0, 0, r.2)
        XCTAssertTrue(r.1.hasPrefix("{\"head_of\":\"\(a.address)\",\"index\":6,"), r.1)
        // Mixed forms are refused as usage.
        XCTAssertEqual(try qsctl(a, ["wait", "--head-of", a.address, "--source-id", "x", "--until", "now"]).0, 2)
    }

    func testEnvironmentFallbacksConfigureTheNodeAndQsctl() throws {
        let ready = tmp.appendingPathComponent("node.ready.json")
        let node = try DaemonProcess("qsnode", [], env: ["QS_DATA": tmp.appendingPathComponent("d").path,
                                                         "QS_LISTEN": "127.0.0.1:0", "QS_ADMIN": "127.0.0.1:0",
                                                         "QS_READY_FILE": ready.path, "QS_LOG_FORMAT": "text"], logDir: tmp)
        XCTAssertTrue(Harness.waitUntil { !node.isRunning || FileManager.default.fileExists(atPath: ready.path) }, node.log)
        let listeners = try ReadyFile.read(ready.path)
        XCTAssertEqual(listeners.map(\.name), ["write", "admin"])
        guard let port = listeners.first.flatMap({ try? Endpoint(parsing: $0.address) })?.port,
              let admin = listeners.last.flatMap({ try? Endpoint(parsing: $0.address) })?.port else {
            return XCTFail("ready file without ports: \(listeners)")
        }
        XCTAssertEqual(httpGet(port: admin, path: "/healthz")?.status, 200)
        XCTAssertEqual(httpGet(port: admin, path: "/readyz")?.status, 200)
        XCTAssertEqual(httpGet(port: admin, path: "/nope")?.status, 404)
        let put = try Harness.run("qsctl", ["put", "k", "v"], env: ["QS_CTL_NODE": "127.0.0.1:\(port)"])
        XCTAssertEqual(put.status, 0, String(decoding: put.stderr, as: UTF8.self))
        let metrics = httpGet(port: admin, path: "/metrics")?.body ?? ""
        for name in ["qs_batches_applied_total 1", "qs_conflicts_total", "qs_identical_writes_dropped_total", "qs_bad_frames_total",
                     "qs_auth_failures_total", "qs_log_head_index 1"] {
            XCTAssertTrue(metrics.contains(name), "missing \(name) in\n\(metrics)")
        }
        XCTAssertFalse(node.log.contains("{\"ts\""), "QS_LOG_FORMAT=text gives text logs")
        XCTAssertEqual(try node.stop(signal: SIGINT), 0)
    }

    /// Configuration mistakes that used to start a node anyway: an empty QS_ROLE started a
    /// writable root, an upstream on a root (its --role left out) was ignored, and a
    /// misspelled variable (QS_MEMCACHE) was ignored without a word.
    func testConfigurationMistakesAreRefusedOrNamed() throws {
        let data = tmp.appendingPathComponent("d").path
        let empty = try Harness.run("qsnode", ["--data", data, "--listen", "127.0.0.1:0"], env: ["QS_ROLE": "", "QS_UPSTREAM": "127.0.0.1:1"])
        XCTAssertEqual(empty.status, 64)
        XCTAssertTrue(String(decoding: empty.stderr, as: UTF8.self).contains("QS_ROLE='' is not a valid value for --role"),
                      String(decoding: empty.stderr, as: UTF8.self))
        let upstream = try Harness.run("qsnode", ["--data", data, "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1"])
        XCTAssertEqual(upstream.status, 64)
        XCTAssertTrue(String(decoding: upstream.stderr, as: UTF8.self).contains("add --role replica"),
                      String(decoding: upstream.stderr, as: UTF8.self))
        XCTAssertFalse(FileManager.default.fileExists(atPath: data + "/data.mdb"), "refused before the store is made")
        let typo = try Harness.run("qsnode", ["--help"], env: ["QS_MEMCACHE": "127.0.0.1:0", "QS_STORE_ENGINE": "lmdb", "QS_WRITE_TOKEN": "secret",
                                                              "QS_CTL_WRITE_TOKEN_FILE": "/x", "QS_CTL_NODE": "127.0.0.1:1"])
        let warned = String(decoding: typo.stderr, as: UTF8.self)
        XCTAssertEqual(typo.status, 0)
        XCTAssertTrue(warned.contains("QS_MEMCACHE is set but qsnode reads no such variable; did you mean QS_MEMCACHED?"), warned)
        // A secret given itself where its file is read: too far for the edit distance.
        XCTAssertTrue(warned.contains("QS_WRITE_TOKEN is set but qsnode reads no such variable; did you mean QS_WRITE_TOKEN_FILE?"), warned)
        XCTAssertFalse(warned.contains("QS_STORE_ENGINE"), warned)
        // qsctl's own namespace, exported in the shell that starts the daemons: not a typo.
        XCTAssertFalse(warned.contains("QS_CTL_"), warned)
        // qsctl knows every subcommand's variables: another subcommand's is not unknown, and
        // its bad value does not stop this one.
        let ctl = try Harness.run("qsctl", ["--node", "127.0.0.1:1", "head"], env: ["QS_CTL_CUTOVER_TIMEOUT": "soon", "QS_CTL_NOD": "x"])
        let ctlErr = String(decoding: ctl.stderr, as: UTF8.self)
        XCTAssertEqual(ctl.status, 3, ctlErr)
        XCTAssertFalse(ctlErr.contains("QS_CTL_CUTOVER_TIMEOUT"), ctlErr)
        XCTAssertTrue(ctlErr.contains("QS_CTL_NOD is set but qsctl reads no such variable; did you mean QS_CTL_NODE?"), ctlErr)
        // A flag's refused value says why, where its type can (ArgumentParser alone said
        // only "is invalid"); the exit codes stay usage errors.
        let cases: [(command: String, args: [String], status: Int32, why: String)] = [
            ("qsktbridge", ["--source", "10.0.0.1:1978"], 64, "names no source kind: start it with kt://, ulog: or capture:"),
            ("qsktbridge", ["--source", "kt://a:1", "--db-map", "0=,0=x/"], 64, "--db-map maps database 0 twice"),
            ("qsnode", ["--memcached", "unix:/tmp/m.sock"], 64, "give its socket path to --memcached-unix"),
            ("qsctl", ["--node", "localhost", "head"], 2, "'localhost' is not HOST:PORT"),
            ("qsktbridge", ["--source", "kt://a:1", "--db-map", "0=a/,1=a/"], 64, "to the same prefix 'a/'"),
            ("qsktbridge", ["--source", "kt://a:1", "--root", "qs://127.0.0.1:7400"], 64, "an address takes no scheme ('qs://')"),
            ("qsqsbridge", ["--source", "127.0.0.1:7400", "--root", "127.0.0.1:7401"], 64, "start it with qs:// or capture:"),
            ("qsktbridge", ["--source", "kt://a:1", "--sid", "70000"], 64, "give a whole number from 0 to 65535"),
            ("qsktbridge", ["--source", "kt://a:1", "--copy-rate", "5000"], 64, "'5000' has no '/s'"),
            ("qsnode", ["--idle-timeout=-5s"], 64, "a duration cannot be negative"),
            ("qsnode", ["--idle-timeout", "5x"], 64, "'x' is not a unit"),
            ("qsnode", ["--listen", "999.1.1.1:7400"], 64, "'999.1.1.1' is not an IPv4 address"),
            ("qsnode", ["--kt-http", "unix:/tmp/k.sock"], 64, "give its socket path to --kt-http-unix"),
            ("qsktbridge", ["--source", ""], 64, "it is empty"),
            ("qsktbridge", ["--source", "kt://unix:/tmp/kt.sock"], 64, "KT's replication is TCP only"),
            ("qsnode", ["--map-size", "5XB"], 64, "'XB' is not a unit"),
            ("qsnode", ["--max-frame-bytes=-1"], 64, "a size cannot be negative"),
            ("qsnode", ["--max-connections", "99999999999999999999"], 64, "too large a number"),
            ("qsqsbridge", ["--source", "qs://127.0.0.1:70000"], 64, "port '70000' is not a number from 0 to 65535"),
            ("fakekt", ["-sid", "70000"], 64, "give a whole number from 0 to 65535"),
            ("fakekt", ["-port", "abc"], 64, "give a whole number"),
            ("qsctl", ["--node", "127.0.0.1:1", "feed", "show", "--db", "99999", "x"], 2, "give a whole number from 0 to 65535"),
        ]
        for c in cases {
            let r = try Harness.run(c.command, c.args)
            let err = String(decoding: r.stderr, as: UTF8.self)
            XCTAssertEqual(r.status, c.status, err)
            XCTAssertTrue(err.contains("is invalid for") && err.contains(c.why), err)
        }
        // A source id the root cannot keep a checkpoint under is refused at start, not by
        // every batch after it.
        for (command, args) in [("qsktbridge", ["--source", "kt://a:1"]), ("qsqsbridge", ["--source", "qs://127.0.0.1:1"]), ("qsrest", ["--acl", "/dev/null"])] {
            let r = try Harness.run(command, args + ["--source-id", String(repeating: "é", count: 128)])
            let err = String(decoding: r.stderr, as: UTF8.self)
            XCTAssertEqual(r.status, 64, err)
            XCTAssertTrue(err.contains("--source-id (or QS_SOURCE_ID) is 256 bytes, the limit is 255"), err)
        }
        // One address where one goes; a replica's upstream is not itself, nor port 0.
        for (command, args, why) in [("qsqsbridge", ["--source", "qs://127.0.0.1:1,127.0.0.1:2"], "names several addresses (a comma)"),
                                     ("qsnode", ["--data", data, "--role", "replica", "--listen", "127.0.0.1:7499", "--upstream", "127.0.0.1:7499"],
                                      "is this replica's own address"),
                                     // localhost for a wildcard listener: itself too, told before it listens.
                                     ("qsnode", ["--data", data, "--role", "replica", "--listen", "0.0.0.0:7499", "--replication-token-file", "/dev/null",
                                                 "--upstream", "localhost:7499"], "upstream localhost:7499 is this replica's own address"),
                                     ("qsnode", ["--data", data, "--role", "replica", "--upstream", "127.0.0.1:0"], "has port 0")] {
            let r = try Harness.run(command, args)
            let err = String(decoding: r.stderr, as: UTF8.self)
            XCTAssertEqual(r.status, 64, err)
            XCTAssertTrue(err.contains(why), err)
        }
        let etcd = try Harness.run("qsnode", ["--data", data, "--etcd", "http://127.0.0.1:1", "--cluster", "c", "--etcd-timeout", "8ms"])
        XCTAssertEqual(etcd.status, 64)
        XCTAssertTrue(String(decoding: etcd.stderr, as: UTF8.self).contains("--etcd-timeout 8ms (or QS_ETCD_TIMEOUT) is shorter than an etcd commit can take"),
                      String(decoding: etcd.stderr, as: UTF8.self))
        let ttl = try Harness.run("qsnode", ["--data", data, "--etcd", "http://127.0.0.1:1", "--cluster", "c"], env: ["QS_ETCD_APPLIED_TTL": "26280h"])
        XCTAssertEqual(ttl.status, 64)
        XCTAssertTrue(String(decoding: ttl.stderr, as: UTF8.self).contains("(or QS_ETCD_APPLIED_TTL) is over a day"), String(decoding: ttl.stderr, as: UTF8.self))
        // Credentials go together, and only with --etcd.
        let user = try Harness.run("qsnode", ["--data", data, "--etcd", "http://127.0.0.1:1", "--cluster", "c", "--etcd-user", "qs"])
        XCTAssertEqual(user.status, 64)
        XCTAssertTrue(String(decoding: user.stderr, as: UTF8.self).contains("go together"), String(decoding: user.stderr, as: UTF8.self))
        let stray = try Harness.run("qsnode", ["--data", data], env: ["QS_ETCD_USER": "qs"])
        XCTAssertEqual(stray.status, 64)
        XCTAssertTrue(String(decoding: stray.stderr, as: UTF8.self).contains("use them with --etcd and --cluster"), String(decoding: stray.stderr, as: UTF8.self))
        // A flag given twice: the last is used, with a word.
        let twice = try Harness.run("qsnode", ["--log-level", "info", "--log-level=debug", "--help"])
        XCTAssertEqual(twice.status, 0)
        XCTAssertTrue(String(decoding: twice.stderr, as: UTF8.self).contains("--log-level is given 2 times; the last one is used"),
                      String(decoding: twice.stderr, as: UTF8.self))
        // A value starting with '-' is read as a flag: the message says so.
        let dash = try Harness.run("qsnode", ["--idle-timeout", "-5s"])
        XCTAssertEqual(dash.status, 64)
        XCTAssertTrue(String(decoding: dash.stderr, as: UTF8.self).contains("the '-5s' after it was taken for a flag"), String(decoding: dash.stderr, as: UTF8.self))
        // A variable's refusal names the flag its reason needs (it said "-unix").
        let unixEnv = try Harness.run("qsnode", ["--data", "/nonexistent/d"], env: ["QS_MEMCACHED": "unix:/tmp/m.sock"])
        XCTAssertEqual(unixEnv.status, 64)
        XCTAssertTrue(String(decoding: unixEnv.stderr, as: UTF8.self).contains("give its socket path to --memcached-unix"),
                      String(decoding: unixEnv.stderr, as: UTF8.self))
        let emptySource = try Harness.run("qsktbridge", [], env: ["QS_SOURCE": ""])
        XCTAssertEqual(emptySource.status, 64)
        XCTAssertTrue(String(decoding: emptySource.stderr, as: UTF8.self).contains("it is set but empty"), String(decoding: emptySource.stderr, as: UTF8.self))
        // A path of this test's own, absent for sure (a /nonexistent some other process made
        // would let the bridge start and run).
        let absent = tmp.appendingPathComponent("absent").path
        for (source, why) in [("ulog:\(absent)", "no such directory"), ("capture:\(absent)", "no such file")] {
            let r = try Harness.run("qsktbridge", ["--source", source])
            XCTAssertEqual(r.status, 64)
            XCTAssertTrue(String(decoding: r.stderr, as: UTF8.self).contains(why), String(decoding: r.stderr, as: UTF8.self))
        }
        let unresolved = try Harness.run("qsnode", ["--data", "/nonexistent/d", "--listen", "nosuchhost.invalid:7400"])
        XCTAssertEqual(unresolved.status, 64)
        XCTAssertTrue(String(decoding: unresolved.stderr, as: UTF8.self).contains("the host name 'nosuchhost.invalid' does not resolve"),
                      String(decoding: unresolved.stderr, as: UTF8.self))
        let same = try Harness.run("qsqsbridge", ["--source", "qs://127.0.0.1:7400", "--root", "127.0.0.1:7400"])
        XCTAssertEqual(same.status, 64)
        XCTAssertTrue(String(decoding: same.stderr, as: UTF8.self).contains("is also in --root"), String(decoding: same.stderr, as: UTF8.self))
        let clear = try Harness.run("qsktbridge", ["--allow-clear", "--no-allow-clear", "--help"])
        XCTAssertTrue(String(decoding: clear.stderr, as: UTF8.self).contains("--allow-clear is given 2 times"), String(decoding: clear.stderr, as: UTF8.self))
        for (args, why) in [(["-port", "99999"], "is not a port: give 0 to 65535"), (["-host", "127.0.0.1:5000"], "holds a port: give the host alone"),
                            (["-tout=-5"], "cannot be negative")] {
            let r = try Harness.run("fakekt", args)
            XCTAssertEqual(r.status, 64, "\(args)")
            XCTAssertTrue(String(decoding: r.stderr, as: UTF8.self).contains(why), String(decoding: r.stderr, as: UTF8.self))
        }
        let short = try Harness.run("qsrest", ["--root", "127.0.0.1:1", "--acl", "/nonexistent", "--commit-timeout", "100ms", "--batch-interval", "500ms"])
        XCTAssertEqual(short.status, 64)
        XCTAssertTrue(String(decoding: short.stderr, as: UTF8.self).contains("must be more than twice --batch-interval"),
                      String(decoding: short.stderr, as: UTF8.self))
    }

    func testEveryFlagHasHelpAndAnEnvironmentVariable() throws {
        let commands: [[String]] = [["qsnode"], ["qsktbridge"], ["qsqsbridge"], ["qsbench"], ["qsctl"]]
            + ["put", "get", "delete", "log", "dump", "status", "wait", "verify", "lag", "record"].map { ["qsctl", $0] }
            + [["qsctl", "feed", "show"], ["qsctl", "feed", "stats"]]
        for command in commands {
            let r = try Harness.run(command[0], Array(command.dropFirst()) + ["--help"])
            let help = String(decoding: r.stdout, as: UTF8.self)
            XCTAssertEqual(r.status, 0)
            // Each option line "  --flag ..." is followed by help text naming its variable.
            let blocks = help.components(separatedBy: "\n  --").dropFirst()
            XCTAssertFalse(blocks.isEmpty)
            for block in blocks {
                let flag = String(block.prefix { $0 != " " && $0 != "\n" && $0 != "/" })
                // ArgumentParser's own flags (--version prints QSVersion).
                if flag == "help" || flag == "version" { continue }
                // qsbench's variables carry its name (QS_BENCH_…), qsctl's its name and the
                // subcommand's (QS_CTL_LOG_FROM, QS_CTL_NODE).
                let prefix: String
                switch command[0] {
                case "qsbench": prefix = "QS_BENCH_"
                case "qsctl": prefix = (["QS", "CTL"] + command.dropFirst().map { $0.uppercased() }).joined(separator: "_") + "_"
                default: prefix = "QS_"
                }
                let variable = prefix + flag.uppercased().replacingOccurrences(of: "-", with: "_")
                XCTAssertTrue(block.contains(variable), "\(command.joined(separator: " ")) --\(flag) does not name \(variable)")
            }
        }
        // fakekt takes ktserver's single-dash options; each names QS_FAKEKT_<NAME>, the tuning
        // flags it takes and ignores included.
        let fakekt = String(decoding: try Harness.run("fakekt", ["--help"]).stdout, as: UTF8.self)
        let options = fakekt.components(separatedBy: "\n  -").dropFirst()
            .map { block in (String(block.prefix { $0.isLetter || $0.isNumber || $0 == "-" }), block) }
            .filter { !["h", "-help", "-version"].contains($0.0) }
        XCTAssertTrue(options.contains { $0.0 == "bgsi" } && options.contains { $0.0 == "onr" }, fakekt)
        for (flag, block) in options {
            let variable = "QS_FAKEKT_" + flag.uppercased().replacingOccurrences(of: "-", with: "_")
            XCTAssertTrue(block.contains(variable), "fakekt -\(flag) does not name \(variable)")
        }
        let missing = try Harness.run("qsnode", [])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(String(decoding: missing.stderr, as: UTF8.self).contains("--data is required"))
    }
}
