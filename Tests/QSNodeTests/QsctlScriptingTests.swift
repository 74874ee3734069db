import Foundation
import QSTesting
import XCTest

/// qsctl in pipes and scripts: a closed pipe, one --output flag, verify's verdicts, exit codes.
final class QsctlScriptingTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("qsctl-scripts")
    }

    override func tearDownWithError() throws {
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    func qsctl(_ node: String, _ args: [String]) throws -> (status: Int32, out: String, err: String) {
        let r = try Harness.run("qsctl", ["--node", node] + args)
        return (r.status, String(decoding: r.stdout, as: UTF8.self), String(decoding: r.stderr, as: UTF8.self))
    }

    func testDumpIntoHeadEndsQuietly() throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        // More than a pipe holds (64 KiB), so qsctl is still writing when head exits.
        let big = String(repeating: "v", count: 20_000)
        for i in 0..<20 { XCTAssertEqual(try qsctl(root.address, ["put", "k\(i)", big]).status, 0) }
        let qsctl = Harness.binDir.appendingPathComponent("qsctl").path
        let script = "set -o pipefail; '\(qsctl)' --node \(root.address) dump --page-size 1 | head -1 > /dev/null; echo \"status=$?\" >&2"
        let r = try Harness.run("/bin/bash", ["-c", script])
        let err = String(decoding: r.stderr, as: UTF8.self)
        XCTAssertEqual(err, "status=141\n", "qsctl ends by SIGPIPE, with nothing on stderr")
        XCTAssertFalse(err.contains("Fatal error"))
    }

    /// `verify --against` lists each key whose record differs, and only those: a value
    /// changed, a key on one side only, either side; keys equal on both are not listed.
    func testVerifyAgainstListsEachDifferingKeyAndNoOther() throws {
        let a = try RootNode(data: tmp.appendingPathComponent("a"), logDir: tmp)
        let b = try RootNode(data: tmp.appendingPathComponent("b"), logDir: tmp)
        for i in 0..<60 {
            XCTAssertEqual(try qsctl(a.address, ["put", "k\(i)", "v\(i)"]).status, 0)
            XCTAssertEqual(try qsctl(b.address, ["put", "k\(i)", i == 42 ? "changed" : "v\(i)"]).status, 0)
        }
        XCTAssertEqual(try qsctl(a.address, ["put", "only-a", "x"]).status, 0)
        XCTAssertEqual(try qsctl(b.address, ["put", "only-b", "y"]).status, 0)
        let r = try qsctl(a.address, ["verify", "--against", b.address, "--range-size", "8"])
        XCTAssertEqual(r.status, 1, r.err)
        let listed = r.out.split(separator: "\n").map { String($0.split(separator: "\t").first ?? "") }.sorted()
        XCTAssertEqual(listed, ["k42", "only-a", "only-b"], r.out)
        // The three keys, and the heads (told on stderr: the logs part).
        XCTAssertTrue(r.err.contains("heads diverged") && r.err.contains(" 3 keys differ; and the heads differ (above)"), r.err)
    }

    func testOutputJSONEverywhere() throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let node = root.address
        func json(_ args: [String]) throws -> Any {
            let r = try qsctl(node, args + ["--output", "json"])
            XCTAssertEqual(r.status, 0, "\(args): \(r.err)")
            return try JSONSerialization.jsonObject(with: Data(r.out.utf8))
        }
        let put = try json(["put", "a\u{01}b", "one"]) as? [String: Any]
        XCTAssertEqual(put?["index"] as? Int, 1)
        XCTAssertEqual(put?["changed"] as? Bool, true)
        _ = try json(["put", "z", "two"])
        let get = try json(["get", "a\u{01}b"]) as? [String: Any]
        XCTAssertEqual(get?["value"] as? String, Data("one".utf8).base64EncodedString())
        XCTAssertEqual((try json(["head"]) as? [String: Any])?["index"] as? Int, 2)
        XCTAssertEqual((try json(["checkpoint", "qsctl"]) as? [String: Any])?["checkpoint"] as? Int, 2)
        let log = try json(["log"]) as? [[String: Any]]
        XCTAssertEqual(log?.map { $0["index"] as? Int }, [1, 2])
        let dump = try json(["dump"]) as? [[String: Any]]
        XCTAssertEqual(dump?.count, 2)
        XCTAssertEqual(dump?.first?["key"] as? String, Data("a\u{01}b".utf8).base64EncodedString())
        XCTAssertEqual((try json(["status"]) as? [String: Any])?["role"] as? String, "root")
        let verify = try json(["verify", "--against", node]) as? [[String: Any]]
        XCTAssertEqual(verify?.first?["relation"] as? String, "equal")
        XCTAssertEqual(verify?.last?["kind"] as? String, "summary")
        XCTAssertEqual((try json(["delete", "z"]) as? [String: Any])?["index"] as? Int, 3)

        // jsonl is an object a line; table escapes binary keys to printable text.
        let lines = try qsctl(node, ["dump", "--output", "jsonl"]).out.split(separator: "\n")
        XCTAssertEqual(lines.count, 1)
        XCTAssertEqual(try qsctl(node, ["dump", "--output", "table"]).out, "a\\x01b\tone\t-\n")
        // get: a newline on a terminal only, none in a pipe.
        XCTAssertEqual(try qsctl(node, ["get", "a\u{01}b"]).out, "one")
        // The old per-subcommand flags are gone: one flag everywhere.
        XCTAssertEqual(try qsctl(node, ["dump", "--format", "jsonl"]).status, 2)
        XCTAssertEqual(try qsctl(node, ["get", "z", "--json"]).status, 2)
        let env = try Harness.run("qsctl", ["--node", node, "head"], env: ["QS_CTL_HEAD_OUTPUT": "table"])
        XCTAssertTrue(String(decoding: env.stdout, as: UTF8.self).hasPrefix("index 3  hash "))
    }

    func testVerifyTellsBehindFromDiverged() throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        for i in 0..<3 { XCTAssertEqual(try qsctl(root.address, ["put", "k\(i)", "v"]).status, 0) }
        let replica = try ReplicaNode(data: tmp.appendingPathComponent("replica"), upstreams: [root.address], logDir: tmp)
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(15)) { replica.metric("qs_replica_head_index") == 3 })
        // Cut the replica off (its upstream list now names a port nothing listens on), then move the root on.
        let refusing = try RefusingPort()
        defer { refusing.close() }
        let moved = httpPost(port: replica.adminPort, path: "/upstream", contentType: "text/plain",
                             body: Array(refusing.address.utf8))
        XCTAssertEqual(moved?.status, 200)
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(15)) { httpGet(port: replica.adminPort, path: "/readyz")?.status == 503 })
        XCTAssertEqual(try qsctl(root.address, ["put", "k\u{02}late", "w"]).status, 0)

        var r = try qsctl(replica.address, ["verify", "--against", root.address])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.err.contains("the node is behind"), r.err)
        XCTAssertTrue(r.out.contains("k\\x02late\tnode: absent\tother: w"), r.out)
        r = try qsctl(root.address, ["verify", "--against", replica.address, "--output", "jsonl"])
        let first = try JSONSerialization.jsonObject(with: Data(r.out.split(separator: "\n")[0].utf8)) as? [String: Any]
        XCTAssertEqual(first?["relation"] as? String, "ahead")

        // Another root with its own history at the same length: diverged.
        let other = try RootNode(data: tmp.appendingPathComponent("other"), logDir: tmp)
        for i in 0..<4 { XCTAssertEqual(try qsctl(other.address, ["put", "o\(i)", "v"]).status, 0) }
        r = try qsctl(other.address, ["verify", "--against", root.address, "--output", "json"])
        let verdict = (try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [[String: Any]])?.first
        XCTAssertEqual(verdict?["relation"] as? String, "diverged")
        XCTAssertTrue(r.err.contains("heads diverged"), r.err)
    }

    func testEveryExitCodeIsInTheHelp() throws {
        func help(_ exe: String) throws -> String {
            // --help wraps its lines: compare with single spaces.
            String(decoding: try Harness.run(exe, ["--help"]).stdout, as: UTF8.self).split(whereSeparator: \.isWhitespace).joined(separator: " ")
        }
        let ctl = try help("qsctl")
        for code in ["0 found/ok", "1 not found", "2 usage error", "3 server or connection", "4 damaged recording", "5 timed out", "141"] {
            XCTAssertTrue(ctl.contains(code), "qsctl --help lacks '\(code)':\n\(ctl)")
        }
        for daemon in ["qsnode", "qsktbridge", "qsqsbridge", "fakekt"] {
            let help = try help(daemon)
            for code in ["0 stopped cleanly", "1 failed", "64 usage error"] { XCTAssertTrue(help.contains(code), "\(daemon) --help lacks '\(code)'") }
            XCTAssertEqual(help.contains("75 stopped"), daemon.hasSuffix("bridge"), daemon)
        }
        let doc = try String(contentsOf: URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../docs/operations.md").standardized, encoding: .utf8)
        for row in ["| every daemon | 64 |", "| qsktbridge, qsqsbridge | 75 |", "| qsctl | 5 |", "| qsctl | 141 |"] {
            XCTAssertTrue(doc.contains(row), "docs/operations.md lacks \(row)")
        }
    }
}
