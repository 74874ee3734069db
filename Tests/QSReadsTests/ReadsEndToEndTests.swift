import Foundation
import QSClient
import QSModel
import QSStore
import QSTesting
import XCTest

/// A real qsnode process serving memcached and KT HTTP on TCP and Unix sockets, filled
/// through the QS write protocol.
final class ReadsEndToEndTests: XCTestCase {
    var tmp: URL!
    var node: RootNode!
    var mcPort = 0, ktPort = 0
    var mcSocket = "", ktSocket = ""

    override func setUp() async throws {
        tmp = try Harness.tempDir("reads-e2e")
        mcSocket = tmp.appendingPathComponent("mc.sock").path
        ktSocket = tmp.appendingPathComponent("kt.sock").path
        node = try RootNode(data: tmp.appendingPathComponent("data"), logDir: tmp, extraArgs: [
            // The values below carry memcached flags in their last 4 bytes, as KT's plug-in with opts=f stored them.
            "--memcached", "127.0.0.1:0", "--memcached-unix", mcSocket, "--memcached-flags-in-value", "true",
            "--kt-http", "127.0.0.1:0", "--kt-http-unix", ktSocket, "--kt-db-map", "0=,1:aux.kct=aux/",
        ])
        mcPort = try node.daemon.port("memcached")
        ktPort = try node.daemon.port("kt-http")
        let now = wallClockSeconds()
        let client = try await QSClient.connect(host: "127.0.0.1", port: node.port)
        _ = try await client.write([
            .set(key: Array("m/a".utf8), value: Array("abc".utf8) + [0, 0, 0, 5], expiry: nil),
            .set(key: Array("bin\u{1}".utf8), value: [0, 9, 10, 13, 0xFF, 0, 0, 0, 0], expiry: now + 3600),
            .set(key: Array("gone".utf8), value: Array("old!flag".utf8), expiry: now - 10),
            .set(key: Array("aux/k".utf8), value: Array("in aux".utf8), expiry: nil),
        ])
        await client.close()
    }

    override func tearDown() async throws {
        if let node { XCTAssertEqual(try node.daemon.stop(), 0, node.daemon.log) }
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    func mc(_ text: String, unix: Bool = false) -> String {
        let bytes = Array((text + "quit\r\n").utf8)
        return String(decoding: unix ? RawSocket.exchange(unixPath: mcSocket, bytes) : RawSocket.exchange(port: mcPort, bytes),
                      as: UTF8.self)
    }

    func kt(_ method: String, _ path: String, headers: [String: String] = [:], body: String = "", unix: Bool = false) -> RawHTTPResponse? {
        let req = httpRequest(method, path, headers: headers, body: Array(body.utf8))
        return RawHTTPResponse(unix ? RawSocket.exchange(unixPath: ktSocket, req) : RawSocket.exchange(port: ktPort, req))
    }

    func testMemcachedGetsSeveralKeysOverTCPAndUnixAndHidesExpired() throws {
        let expected = "VALUE m/a 5 3\r\nabc\r\nVALUE bin\u{1} 0 5\r\n\0\t\n\r\u{FFFD}\r\nEND\r\n"
        XCTAssertEqual(mc("get m/a bin\u{1} gone missing\r\n"), expected)
        XCTAssertEqual(mc("get m/a bin\u{1} gone missing\r\n", unix: true), expected)
        let gets = mc("gets m/a\r\n")
        XCTAssertTrue(gets.hasPrefix("VALUE m/a 5 3 ") && gets.hasSuffix("\r\nabc\r\nEND\r\n"), gets)
        XCTAssertEqual(gets, mc("gets m/a\r\n", unix: true), "the cas unique is stable")
        XCTAssertEqual(mc("get aux/k\r\n"), "END\r\n", "memcached reads database 0 only")
        XCTAssertEqual(mc("version\r\n"), "VERSION KyotoTycoon/0.9.56b\r\n")
        XCTAssertTrue(mc("stats\r\n").hasSuffix("END\r\n"))
    }

    func testKTHTTPReadsWithEncodingsDatabasesAndExpiry() throws {
        let get = try XCTUnwrap(kt("POST", "/rpc/get", headers: ["Content-Type": "text/tab-separated-values; colenc=U"], body: "key\tbin%01\n"))
        XCTAssertEqual(get.status, 200)
        XCTAssertEqual(get.headers["content-type"], "text/tab-separated-values; colenc=U")
        XCTAssertTrue(String(decoding: get.body, as: UTF8.self).hasPrefix("value\t%00%09%0a%0d%ff%00%00%00%00\nxt\t"), String(decoding: get.body, as: UTF8.self))
        XCTAssertEqual(kt("GET", "/rpc/get?key=gone")?.status, 450, "expired records are hidden")
        XCTAssertEqual(kt("GET", "/gone")?.status, 404)
        XCTAssertEqual(kt("GET", "/rpc/get?key=k&DB=aux.kct", unix: true)?.body, Array("value\tin aux\n".utf8))
        XCTAssertEqual(kt("GET", "/1/k")?.body, Array("in aux".utf8))
        XCTAssertEqual(kt("GET", "/rpc/get?key=k&DB=7")?.body, Array("ERROR\tno such database\n".utf8))
        XCTAssertEqual(kt("POST", "/rpc/get_bulk", headers: ["Content-Type": "application/x-www-form-urlencoded"],
                          body: "_m%2Fa=&_gone=&_aux%2Fk=")?.body, Array("_m%2fa\tabc%00%00%00%05\nnum\t1\n".utf8))
        XCTAssertEqual(kt("GET", "/rpc/match_prefix?prefix=")?.body, Array("_bin%01\t0\n_m%2fa\t1\nnum\t2\n".utf8))
        XCTAssertEqual(kt("GET", "/rpc/check?key=m/a")?.body, Array("vsiz\t7\n".utf8))
        XCTAssertEqual(kt("GET", "/rpc/status?DB=1")?.body, Array("count\t1\nsize\t7\n".utf8))
        let head = try XCTUnwrap(kt("HEAD", "/bin%01", unix: true))
        XCTAssertEqual(head.status, 200)
        XCTAssertEqual(head.headers["content-length"], "9")
        XCTAssertNotNil(head.headers["x-kt-xt"])
    }

    /// match_regex takes POSIX extended expressions, as KT's does (`kc::Regex`: regcomp),
    /// matched without backtracking: `(a+)+$` over a key of 40 `a`s and a `!` (hours of CPU
    /// for a backtracking matcher, which let one read client hold the reader threads)
    /// answers like any other scan.
    func testMatchRegexIsPOSIXAndNeverBacktracks() async throws {
        let client = try await QSClient.connect(host: "127.0.0.1", port: node.port)
        _ = try await client.write([.set(key: Array((String(repeating: "a", count: 40) + "!").utf8), value: [1], expiry: nil),
                                    .set(key: Array("aaa".utf8), value: [1], expiry: nil)])
        await client.close()
        let evil = try XCTUnwrap(kt("GET", "/rpc/match_regex?regex=%28a%2B%29%2B%24"))
        XCTAssertEqual(evil.status, 200)
        let lines = Set(String(decoding: evil.body, as: UTF8.self).split(separator: "\n").map { $0.split(separator: "\t")[0] })
        XCTAssertEqual(lines, ["_aaa", "_m/a", "num"], String(decoding: evil.body, as: UTF8.self))
        // POSIX bracket classes, which ICU's syntax lacked.
        let posix = try XCTUnwrap(kt("GET", "/rpc/match_regex?regex=%5E%5B%5B%3Aalpha%3A%5D%5D%2B%24"))
        XCTAssertTrue(String(decoding: posix.body, as: UTF8.self).contains("_aaa\t"), String(decoding: posix.body, as: UTF8.self))
        XCTAssertTrue(String(decoding: posix.body, as: UTF8.self).contains("num\t1"), String(decoding: posix.body, as: UTF8.self))
    }

    /// What glibc's `regcomp`/`regexec` would do without bound is refused before it is
    /// compiled, with KT's 450 naming why, counted as a bad request: a repetition bound over
    /// 255 (`a{1,20000}`: 4 GB a request), nested bounds multiplying past 1,024 atoms, a
    /// back-reference (backtracking: 80 s of two cores for one scan), a pattern over 1 KiB.
    /// Bounds and classes within the limits still match.
    func testMatchRegexRefusesWhatWouldCompileOrMatchWithoutBound() async throws {
        let client = try await QSClient.connect(host: "127.0.0.1", port: node.port)
        _ = try await client.write([.set(key: Array("aaa".utf8), value: [1], expiry: nil)])
        await client.close()
        let before = node.metric("qs_kt_http_bad_requests_total") ?? 0
        for (pattern, why) in [("a%7B1%2C20000%7D", "a repetition bound of 20000"),
                               ("%28a%7B1%2C200%7D%29%7B1%2C200%7D", "atoms once its repetitions are expanded"),
                               ("%28.%2A%29%5C1", "a back-reference"),
                               (String(repeating: "a", count: 1025), "longer than 1024 bytes")] {
            let r = try XCTUnwrap(kt("GET", "/rpc/match_regex?regex=\(pattern)"))
            XCTAssertEqual(r.status, 450, pattern)
            XCTAssertTrue(String(decoding: r.body, as: UTF8.self).contains(why), String(decoding: r.body, as: UTF8.self))
        }
        XCTAssertTrue(Harness.waitUntil { (self.node.metric("qs_kt_http_bad_requests_total") ?? 0) >= before + 4 })
        let within = try XCTUnwrap(kt("GET", "/rpc/match_regex?regex=%5Ea%7B3%7D%24"))
        XCTAssertEqual(within.status, 200)
        XCTAssertTrue(String(decoding: within.body, as: UTF8.self).contains("_aaa\t"), String(decoding: within.body, as: UTF8.self))
    }

    func testSimpleReadsStayOnTheFastPathAndOthersAreHandedOver() throws {
        XCTAssertEqual(kt("GET", "/m%2Fa")?.body, Array("abc".utf8) + [0, 0, 0, 5])
        XCTAssertEqual(kt("GET", "/rpc/get?key=k&DB=aux.kct")?.body, Array("value\tin aux\n".utf8))
        XCTAssertEqual(kt("HEAD", "/gone")?.status, 404)
        XCTAssertEqual(node.metric("qs_kt_http_handovers_total") ?? 0, 0, "simple reads are answered by the fast path")
        // A body, and a procedure other than get: NIO's pipeline answers, one hand-over each.
        XCTAssertEqual(kt("POST", "/rpc/get", headers: ["Content-Type": "application/x-www-form-urlencoded"], body: "key=m%2Fa")?.status, 200)
        XCTAssertEqual(kt("GET", "/rpc/void")?.status, 200)
        XCTAssertTrue(Harness.waitUntil { self.node.metric("qs_kt_http_handovers_total") == 2 },
                      "hand-overs: \(node.metric("qs_kt_http_handovers_total") ?? -1)")
        XCTAssertTrue(Harness.waitUntil { self.node.metric("qs_kt_http_connections") == 0 },
                      "open connections: \(node.metric("qs_kt_http_connections") ?? -1)")
    }

    func testBogusRequestsAreAnsweredCountedLoggedAndTheNodeStaysUp() throws {
        XCTAssertEqual(mc("bogus\r\n"), "ERROR\r\n")
        XCTAssertEqual(mc("set k 0 0 x\r\n"), "CLIENT_ERROR bad command line format\r\n")
        XCTAssertEqual(mc("get " + String(repeating: "k", count: 9000) + "\r\n"), "CLIENT_ERROR line too long\r\n")
        XCTAssertEqual(mc("set k 0 0 2\r\nhi\r\ndelete k\r\nget k\r\n"),
                       "SERVER_ERROR read-only: write through the QS root\r\nSERVER_ERROR read-only: write through the QS root\r\nEND\r\n")
        XCTAssertEqual(kt("POST", "/rpc/nosuch")?.body, Array("ERROR\tnot implemented: nosuch\n".utf8))
        XCTAssertEqual(kt("POST", "/rpc/get", headers: ["Content-Type": "text/tab-separated-values"])?.status, 400)
        XCTAssertEqual(kt("GET", "/rpc/match_regex?regex=(")?.status, 450)
        XCTAssertEqual(String(decoding: RawSocket.exchange(port: ktPort, Array("NOT HTTP AT ALL\r\n\r\n".utf8)), as: UTF8.self)
            .hasPrefix("HTTP/1.1 400"), true)
        let set = try XCTUnwrap(kt("POST", "/rpc/set?key=a&value=b"))
        XCTAssertEqual(set.status, 501)
        XCTAssertEqual(kt("PUT", "/a", body: "v")?.status, 501)
        // KT's binary protocol on the same port: an unknown magic byte, and a set_bulk (0xBF).
        XCTAssertEqual(RawSocket.exchange(port: ktPort, [0xBE, 0, 0, 0, 0, 0, 0, 0, 0]), [])
        XCTAssertEqual(RawSocket.exchange(port: ktPort, [0xB8, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1,
                                                        0, 0, 0, 0, 0, 0, 0, 0, 0x6B, 0x76]), [0xBF])

        XCTAssertTrue(Harness.waitUntil { self.node.metric("qs_memcached_bad_requests_total") == 3 },
                      "memcached bad: \(node.metric("qs_memcached_bad_requests_total") ?? -1)")
        XCTAssertTrue(Harness.waitUntil { self.node.metric("qs_kt_http_bad_requests_total") == 5 },
                      "kt bad: \(node.metric("qs_kt_http_bad_requests_total") ?? -1)")
        XCTAssertEqual(node.metric("qs_memcached_writes_refused_total"), 2)
        XCTAssertEqual(node.metric("qs_kt_http_writes_refused_total"), 3)
        XCTAssertTrue(node.daemon.log.contains("bad memcached request"), node.daemon.log)
        XCTAssertTrue(node.daemon.log.contains("bad kt_http request"))
        XCTAssertTrue(node.daemon.log.contains("\"peer\":\"127.0.0.1:"), "log lines name the peer")
        XCTAssertTrue(node.daemon.isRunning)
        XCTAssertEqual(mc("get m/a\r\n"), "VALUE m/a 5 3\r\nabc\r\nEND\r\n")
    }
}
