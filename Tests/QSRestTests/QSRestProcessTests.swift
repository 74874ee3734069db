import Foundation
import QSClient
import QSModel
import QSTesting
import XCTest

/// qsrest as a real process in front of a real root, with curl and raw HTTP as producers.
final class QSRestProcessTests: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = try Harness.tempDir("qsrest")
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: tmp)
    }

    static let aclText = """
        [producers.dns]
        token_sha256 = "\(sha256Hex("dns-token"))"
        prefixes = ["dns/"]

        [producers.waf]
        token_sha256 = "\(sha256Hex("waf-token"))"
        prefixes = ["waf/"]
        """

    func writeACL(_ text: String = aclText) throws -> URL {
        let url = tmp.appendingPathComponent("acl.toml")
        try Data(text.utf8).write(to: url)
        return url
    }

    func startRest(root: String, acl: URL, extra: [String] = []) throws -> (DaemonProcess, Int, Int) {
        let rest = try DaemonProcess("qsrest", ["--root", root, "--listen", "127.0.0.1:0", "--acl", acl.path,
                                                "--admin", "127.0.0.1:0", "--batch-interval", "50ms", "--source-id", "qsrest:test",
                                                "--log-format", "text"] + extra, logDir: tmp, ready: true)
        return (rest, try rest.port("rest"), try rest.port("admin"))
    }

    /// curl as a producer: status code and body.
    func curl(_ args: [String]) throws -> (status: Int, body: String) {
        let r = try Harness.run("/usr/bin/curl", ["-s", "-w", "\n%{http_code}"] + args)
        let text = String(decoding: r.stdout, as: UTF8.self)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        return (Int(lines.last ?? "") ?? 0, lines.dropLast().joined(separator: "\n"))
    }

    func testKTProducersWriteThroughQsrestAndAreAnsweredAsKTWould() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let (rest, port, admin) = try startRest(root: root.address, acl: try writeACL())
        let client = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        let base = "http://127.0.0.1:\(port)"
        let dns = ["-u", "dns:dns-token"]

        // set is acknowledged only once committed: the root has it as soon as curl returns.
        XCTAssertEqual(try curl(dns + ["\(base)/rpc/set?key=dns%2Fa&value=1"]).status, 200)
        let a = try await client.get(Array("dns/a".utf8))
        XCTAssertEqual(a?.value, Array("1".utf8))
        let dup = try curl(dns + ["\(base)/rpc/add?key=dns%2Fa&value=2"])
        XCTAssertEqual(dup.status, 450)
        XCTAssertEqual(dup.body, "ERROR\tDB: 6: record duplication: record duplication\n")
        XCTAssertEqual(try curl(dns + ["\(base)/rpc/replace?key=dns%2Fnone&value=2"]).status, 450)
        XCTAssertEqual(try curl(dns + ["\(base)/rpc/append?key=dns%2Fa&value=x"]).status, 200)
        XCTAssertEqual(try curl(dns + ["\(base)/rpc/increment?key=dns%2Fn&num=5"]).body, "num\t5\n")
        XCTAssertEqual(try curl(dns + ["\(base)/rpc/increment?key=dns%2Fn&num=2"]).body, "num\t7\n")
        XCTAssertEqual(try curl(dns + ["\(base)/rpc/cas?key=dns%2Fa&oval=wrong&nval=z"]).status, 450)
        XCTAssertEqual(try curl(dns + ["\(base)/rpc/cas?key=dns%2Fa&oval=1x&nval=z"]).status, 200)
        // The bulk procedures, with a TSV body in base64 column encoding.
        func b64(_ s: String) -> String { Data(s.utf8).base64EncodedString() }
        let tsv = "\(b64("_dns/b"))\t\(b64("b"))\n\(b64("_dns/c"))\t\(b64("c"))\n"
        let bulk = try curl(dns + ["-H", "Content-Type: text/tab-separated-values; colenc=B", "--data-binary", tsv, "\(base)/rpc/set_bulk"])
        XCTAssertEqual(bulk.status, 200)
        XCTAssertEqual(bulk.body, "num\t2\n")
        XCTAssertEqual(try curl(dns + ["\(base)/rpc/remove_bulk?_dns%2Fb=&_dns%2Fzz="]).body, "num\t1\n")
        XCTAssertEqual(try curl(dns + ["\(base)/rpc/remove?key=dns%2Fzz"]).status, 450)
        // REST, with a bearer token.
        let bearer = ["-H", "Authorization: Bearer dns-token"]
        XCTAssertEqual(try curl(bearer + ["-X", "PUT", "--data-binary", "rest", "\(base)/dns%2Fr"]).status, 201)
        XCTAssertEqual(try curl(bearer + ["-X", "PUT", "-H", "X-Kt-Mode: add", "--data-binary", "again", "\(base)/dns%2Fr"]).status, 450)
        XCTAssertEqual(try curl(bearer + ["-X", "DELETE", "\(base)/dns%2Fc"]).status, 204)
        XCTAssertEqual(try curl(bearer + ["-X", "DELETE", "\(base)/dns%2Fc"]).status, 404)
        // Refusals: clear, a key outside the keyspace, no or a wrong credential.
        XCTAssertEqual(try curl(dns + ["\(base)/rpc/clear"]).status, 501)
        let outside = try curl(dns + ["\(base)/rpc/set?key=waf%2Fx&value=1"])
        XCTAssertEqual(outside.status, 403)
        XCTAssertTrue(outside.body.contains("outside producer dns's keyspace (dns/)"), outside.body)
        XCTAssertEqual(try curl(["\(base)/rpc/set?key=dns%2Fx&value=1"]).status, 401)
        XCTAssertEqual(try curl(["-u", "waf:dns-token", "\(base)/rpc/set?key=dns%2Fx&value=1"]).status, 401)

        let state = try await client.scan(prefix: [], limit: 100)
        let got = Dictionary(uniqueKeysWithValues: state.records.map { (String(decoding: $0.key, as: UTF8.self), $0.record.value) })
        XCTAssertEqual(got, ["dns/a": Array("z".utf8), "dns/n": [0, 0, 0, 0, 0, 0, 0, 7], "dns/r": Array("rest".utf8)])
        XCTAssertEqual(metricValue(port: admin, "qs_rest_refused_total{producer=\"dns\",reason=\"keyspace\"}"), 1)
        XCTAssertEqual(metricValue(port: admin, "qs_rest_auth_failures_total"), 2)
        XCTAssertTrue(rest.log.contains("outside the producer's keyspace"), rest.log)
        await client.close()
        XCTAssertEqual(try rest.stop(), 0)
    }

    func testTwoProducersKeepToTheirKeyspacesAndSIGHUPReloadsTheACL() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let acl = try writeACL()
        let (rest, port, admin) = try startRest(root: root.address, acl: acl)
        let base = "http://127.0.0.1:\(port)"
        XCTAssertEqual(try curl(["-u", "dns:dns-token", "\(base)/rpc/set?key=dns%2F1&value=1"]).status, 200)
        XCTAssertEqual(try curl(["-u", "waf:waf-token", "\(base)/rpc/set?key=waf%2F1&value=1"]).status, 200)
        XCTAssertEqual(try curl(["-u", "dns:dns-token", "\(base)/rpc/set?key=waf%2F2&value=1"]).status, 403)
        XCTAssertEqual(try curl(["-u", "waf:waf-token", "\(base)/rpc/set?key=dns%2F2&value=1"]).status, 403)

        // A bad file (overlapping prefixes) keeps the ACL in force and says why.
        try Data((Self.aclText.replacingOccurrences(of: "prefixes = [\"waf/\"]", with: "prefixes = [\"dns/x\"]")).utf8).write(to: acl)
        kill(rest.pid, SIGHUP)
        XCTAssertTrue(Harness.waitUntil { rest.log.contains("ACL reload refused") }, rest.log)
        XCTAssertTrue(rest.log.contains("overlap"), rest.log)
        XCTAssertEqual(try curl(["-u", "waf:waf-token", "\(base)/rpc/set?key=waf%2F3&value=1"]).status, 200)
        // A good one: waf now owns cfg/ too.
        try Data((Self.aclText.replacingOccurrences(of: "prefixes = [\"waf/\"]", with: "prefixes = [\"waf/\", \"cfg/\"]")).utf8).write(to: acl)
        kill(rest.pid, SIGHUP)
        XCTAssertTrue(Harness.waitUntil { metricValue(port: admin, "qs_rest_acl_reloads_total{result=\"ok\"}") == 1 })
        XCTAssertEqual(try curl(["-u", "waf:waf-token", "\(base)/rpc/set?key=cfg%2F1&value=1"]).status, 200)
        XCTAssertEqual(try rest.stop(), 0)
    }

    /// SIGKILL of qsrest, then of the root, while producers write: every write that was
    /// answered 200 is at the root afterwards.
    func testNoAcknowledgedWriteIsLostWhenQsrestOrTheRootIsKilled() async throws {
        let socket = tmp.appendingPathComponent("root.sock").path
        let data = tmp.appendingPathComponent("root")
        var root = try RootNode(data: data, logDir: tmp, extraArgs: ["--unix", socket])
        let acl = try writeACL()
        var (rest, port, _) = try startRest(root: "unix:\(socket)", acl: acl)
        let acked = AckedKeys()
        let stop = StopFlag()
        let currentPort = PortBox(port)
        let producers = (0..<4).map { p in
            JoinableThread {
                var i = 0
                while !stop.isSet {
                    let key = "dns/p\(p)-\(i)"
                    let r = httpPost(port: currentPort.value, path: "/rpc/set", contentType: "application/x-www-form-urlencoded",
                                     body: Array("key=\(key.replacingOccurrences(of: "/", with: "%2F"))&value=\(i)".utf8),
                                     headers: [("Authorization", "Bearer dns-token")])
                    if r?.status == 200 { acked.add(key) }
                    i += 1
                }
            }
        }
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { acked.count >= 50 })
        try rest.stop(signal: SIGKILL)
        (rest, port, _) = try startRest(root: "unix:\(socket)", acl: acl)
        currentPort.value = port
        let before = acked.count
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { acked.count >= before + 50 })
        try root.daemon.stop(signal: SIGKILL)
        root = try RootNode(data: data, logDir: tmp, extraArgs: ["--unix", socket])
        let afterRoot = acked.count
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(30)) { acked.count >= afterRoot + 50 }, rest.log)
        stop.set()
        for t in producers { t.wait() }
        let client = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        var missing = [String]()
        for key in acked.all {
            if try await client.get(Array(key.utf8)) == nil { missing.append(key) }
        }
        XCTAssertEqual(missing, [], "acknowledged writes missing at the root")
        XCTAssertGreaterThan(acked.count, 150)
        await client.close()
        XCTAssertEqual(try rest.stop(), 0)
    }
}

final class AckedKeys: @unchecked Sendable {
    private let lock = NSLock()
    private var keys = [String]()
    func add(_ k: String) { lock.withLock { keys.append(k) } }
    var count: Int { lock.withLock { keys.count } }
    var all: [String] { lock.withLock { keys } }
}

final class PortBox: @unchecked Sendable {
    private let lock = NSLock()
    private var v: Int
    init(_ v: Int) { self.v = v }
    var value: Int {
        get { lock.withLock { v } }
        set { lock.withLock { v = newValue } }
    }
}

/// A thread whose end can be awaited.
final class JoinableThread: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    init(_ body: @escaping @Sendable () -> Void) {
        Thread.detachNewThread { [done] in
            body()
            done.signal()
        }
    }
    func wait() { done.wait() }
}
