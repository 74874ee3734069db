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
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
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
        // HEAD with a body: 400 and nothing written, as KT answers it (HEAD with the write in
        // its query is a write, as in KT).
        let fd = try XCTUnwrap(Harness.connectLoopback(port: port))
        let head = Array("HEAD /rpc/set HTTP/1.1\r\nHost: x\r\nAuthorization: Basic \(Data("dns:dns-token".utf8).base64EncodedString())\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 19\r\n\r\nkey=dns%2Fhd&value=1".utf8)
        _ = head.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        let answer = readHTTPResponse(fd)
        close(fd)
        XCTAssertEqual(answer?.status, 400)
        let hd = try await client.get(Array("dns/hd".utf8))
        XCTAssertNil(hd)

        let state = try await client.scan(prefix: [], limit: 100)
        let got = Dictionary(uniqueKeysWithValues: state.records.map { (String(decoding: $0.key, as: UTF8.self), $0.record.value) })
        XCTAssertEqual(got, ["dns/a": Array("z".utf8), "dns/n": [0, 0, 0, 0, 0, 0, 0, 7], "dns/r": Array("rest".utf8)])
        XCTAssertEqual(metricValue(port: admin, "qs_rest_refused_total{producer=\"dns\",reason=\"keyspace\"}"), 1)
        XCTAssertEqual(metricValue(port: admin, "qs_rest_auth_failures_total"), 2)
        XCTAssertTrue(rest.log.contains("outside the producer's keyspace"), rest.log)
        // qsrest exports its root link's metrics, not the bridges' feed metrics it would
        // never move (they stayed 0 while it committed).
        XCTAssertEqual(metricValue(port: admin, "qs_bridge_root_connected"), 1)
        XCTAssertNil(metricValue(port: admin, "qs_bridge_checkpoint_position"))
        XCTAssertNil(metricValue(port: admin, "qs_bridge_batches_applied_total"))
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
        // A comment-only file names no producer: refused as it is at start (every producer
        // would get 401 while /readyz said ready), the ACL in force stays.
        try Data("# producers moved to another file\n".utf8).write(to: acl)
        kill(rest.pid, SIGHUP)
        XCTAssertTrue(Harness.waitUntil { metricValue(port: admin, "qs_rest_acl_reloads_total{result=\"error\"}") == 2 }, rest.log)
        XCTAssertTrue(rest.log.contains("names no producer"), rest.log)
        XCTAssertEqual(try curl(["-u", "waf:waf-token", "\(base)/rpc/set?key=cfg%2F2&value=1"]).status, 200)
        XCTAssertEqual(try rest.stop(), 0)
    }

    /// 300 sets pipelined on one keep-alive connection, several to one key: they join a
    /// batch or two (not one batch interval each: 150 s at 500 ms), are applied in the order
    /// sent (the last value stays), and every answer comes, in order.
    func testPipelinedRequestsJoinOneBatchInTheOrderSent() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let (rest, port, admin) = try startRest(root: root.address, acl: try writeACL(), extra: ["--batch-interval", "500ms"])
        let credential = Data("dns:dns-token".utf8).base64EncodedString()
        var burst = [UInt8]()
        for i in 0..<300 {
            burst += Array("GET /rpc/set?key=dns%2Fp\(i % 10)&value=\(i) HTTP/1.1\r\nHost: x\r\nAuthorization: Basic \(credential)\r\n\r\n".utf8)
        }
        let fd = try XCTUnwrap(Harness.connectLoopback(port: port))
        defer { close(fd) }
        XCTAssertEqual(burst.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }, burst.count)
        var text = ""
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var tv = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        while text.components(separatedBy: "HTTP/1.1 ").count - 1 < 300 {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { break }
            text += String(decoding: buffer[..<n], as: UTF8.self)
        }
        XCTAssertEqual(text.components(separatedBy: "HTTP/1.1 200 OK").count - 1, 300, rest.log)
        XCTAssertLessThanOrEqual(metricValue(port: admin, "qs_rest_batches_committed_total") ?? .infinity, 10)
        let client = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        for k in 0..<10 {
            let got = try await client.get(Array("dns/p\(k)".utf8))
            XCTAssertEqual(got?.value, Array("\(290 + k)".utf8), "dns/p\(k): the last value sent stays")
        }
        await client.close()
        XCTAssertEqual(try rest.stop(), 0)
    }

    /// Unparsable bytes behind a pipelined write: the write's answer comes first (it was
    /// applied), then a 400 for the bytes, then the close. (NIO's error handler answered 400
    /// at once in the write's place: a producer read the applied write as refused.)
    func testUnparsableBytesBehindAWriteAreAnsweredAfterIt() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let (rest, port, admin) = try startRest(root: root.address, acl: try writeACL())
        let credential = Data("dns:dns-token".utf8).base64EncodedString()
        let bytes = Array("POST /rpc/set?key=dns%2Fg&value=applied HTTP/1.1\r\nHost: x\r\nAuthorization: Basic \(credential)\r\nContent-Length: 0\r\n\r\n".utf8)
            + [0x01, 0x02] + Array(" NOT HTTP\r\n\r\n".utf8)
        let fd = try XCTUnwrap(Harness.connectLoopback(port: port))
        defer { close(fd) }
        XCTAssertEqual(bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }, bytes.count)
        let text = Self.readUntilClosed(fd, within: .seconds(20)).text
        let answers = text.components(separatedBy: "HTTP/1.1 ").dropFirst().map { String($0.prefix(3)) }
        XCTAssertEqual(answers, ["200", "400"], text)
        XCTAssertTrue(text.contains("Connection: close"), text)
        let client = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        let got = try await client.get(Array("dns/g".utf8))
        XCTAssertEqual(got?.value, Array("applied".utf8))
        await client.close()
        XCTAssertEqual(metricValue(port: admin, "qs_rest_bad_requests_total"), 1)
        XCTAssertEqual(try rest.stop(), 0)
    }

    /// A producer that sends its end right after its requests (`printf … | nc -N`, an
    /// HTTP/1.0 script) is answered each once its write is committed, then the connection
    /// closes, as KT answers. (Its end closed the connection: the writes were applied and
    /// never acknowledged.) A body its end cuts short is answered 400 and writes nothing.
    func testAProducerThatSendsItsEndAfterItsRequestsIsAnsweredThem() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let (rest, port, _) = try startRest(root: root.address, acl: try writeACL())
        let auth = "Authorization: Basic \(Data("dns:dns-token".utf8).base64EncodedString())\r\n"
        for (request, statuses) in [
            ("GET /rpc/set?key=dns%2Fh1&value=one HTTP/1.0\r\n\(auth)\r\n", ["200"]),
            ("PUT /dns%2Fh2 HTTP/1.1\r\n\(auth)Content-Length: 3\r\n\r\ntwoPUT /dns%2Fh3 HTTP/1.1\r\n\(auth)Content-Length: 5\r\n\r\nthree", ["201", "201"]),
            ("PUT /dns%2Fh4 HTTP/1.1\r\n\(auth)Content-Length: 9\r\n\r\ncut", ["400"]),
        ] {
            let fd = try XCTUnwrap(Harness.connectLoopback(port: port))
            defer { close(fd) }
            let bytes = Array(request.utf8)
            XCTAssertEqual(bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }, bytes.count)
            shutdown(fd, Int32(SHUT_WR))
            let text = Self.readUntilClosed(fd, within: .seconds(20)).text
            let answers = text.components(separatedBy: "HTTP/1.").dropFirst().map { String($0.dropFirst(2).prefix(3)) }
            XCTAssertEqual(answers, statuses, text)
            XCTAssertTrue(text.hasPrefix("HTTP/1.1 "), "ktserver's status line says HTTP/1.1 whatever the request's: \(text)")
        }
        let client = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        for (key, value) in [("dns/h1", "one"), ("dns/h2", "two"), ("dns/h3", "three")] {
            let got = try await client.get(Array(key.utf8))
            XCTAssertEqual(got?.value, Array(value.utf8), key)
        }
        let cut = try await client.get(Array("dns/h4".utf8))
        XCTAssertNil(cut)
        await client.close()
        XCTAssertEqual(try rest.stop(), 0)
    }

    /// A producer that writes a whole unparsable request (20 MiB after a bad chunk size)
    /// before it reads gets the 400 that says why: qsrest reads and drops the rest after
    /// answering, its output shut, until the producer's end (`LingeringClose`). Closed at
    /// once, the bytes still coming were answered with a reset, and the producer's write
    /// failed 5–7 MB in. (A body over --max-body is read to its end before the 413 already.)
    func testAProducerThatWritesAWholeUnparsableRequestBeforeReadingGetsThe400() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let (rest, port, _) = try startRest(root: root.address, acl: try writeACL())
        let auth = "Authorization: Basic \(Data("dns:dns-token".utf8).base64EncodedString())\r\n"
        let head = Array("PUT /dns%2Fh1 HTTP/1.1\r\n\(auth)Transfer-Encoding: chunked\r\n\r\nzz\r\n".utf8)
        let (sendError, reply) = Harness.sendWholeThenRead(port: port, head: head, filler: 20 << 20)
        XCTAssertNil(sendError.map { String(cString: strerror($0)) }, "the producer's write failed")
        let text = String(decoding: reply, as: UTF8.self)
        XCTAssertTrue(text.hasPrefix("HTTP/1.1 400 "), text)
        XCTAssertTrue(text.contains("unparsable HTTP"), text)
        XCTAssertEqual(try rest.stop(), 0)
    }

    /// A graceful stop while increments pipelined on two connections wait for their batch:
    /// each connection answers every request it had taken, in order, only the last answer
    /// saying `Connection: close`, then closes; increments sent on it once the stop has begun
    /// are not taken, so not applied. A producer that sends again what got no answer applies
    /// each increment once. (Before, the first answer after the signal said close and the
    /// rest were never written though their increments were applied; the connection stayed
    /// open until --shutdown-timeout, taking and applying what came after.) One connection is
    /// read only once qsrest has exited: the stop does not wait for a peer to read.
    func testAStopAnswersEveryRequestTakenThenClosesAndTakesNoMore() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        // A long batch interval: the requests wait for their batch when the stop begins. A
        // shutdown timeout well past the deadline below: a connection left open shows as such.
        let (rest, port, admin) = try startRest(root: root.address, acl: try writeACL(),
                                                extra: ["--batch-interval", "2s", "--shutdown-timeout", "40s"])
        let credential = Data("dns:dns-token".utf8).base64EncodedString()
        let n = 20
        func increments(_ key: String) -> [UInt8] {
            Array(String(repeating: "POST /rpc/increment?key=dns%2F\(key)&num=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Basic \(credential)\r\nContent-Length: 0\r\n\r\n",
                         count: n).utf8)
        }
        let read = try XCTUnwrap(Harness.connectLoopback(port: port)), unread = try XCTUnwrap(Harness.connectLoopback(port: port))
        defer { close(read); close(unread) }
        for (fd, key) in [(read, "taken"), (unread, "unread")] {
            let burst = increments(key)
            XCTAssertEqual(burst.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }, burst.count)
        }
        try await waitFor("both bursts taken", timeout: .seconds(20), pollEvery: .milliseconds(10)) {
            metricValue(port: admin, "qs_rest_requests_total{producer=\"dns\"}") == Double(2 * n)
        }
        kill(rest.pid, SIGTERM)
        let signalled = ContinuousClock.now
        try await waitFor("the producer port closed", timeout: .seconds(20), pollEvery: .milliseconds(10)) { !Harness.isListening(port: port) }
        // The connection may be closed already (its answers written): the bytes are then
        // refused, which is as good.
        let late = increments("late")
        _ = late.withUnsafeBytes { send(read, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        let (text, closed) = Self.readUntilClosed(read, within: .seconds(15))
        XCTAssertTrue(closed, "the connection was still open 15 s after the signal; it got: \(text)")
        XCTAssertEqual(try rest.stop(signal: 0, timeout: .seconds(60)), 0, "exits once every answer is written: \(rest.log)")
        XCTAssertLessThan(ContinuousClock.now - signalled, .seconds(15), "qsrest stopped within 15 s of the signal")
        let (unreadText, unreadClosed) = Self.readUntilClosed(unread, within: .seconds(5))
        XCTAssertTrue(unreadClosed)

        func answers(_ text: String) -> [(status: Int, closes: Bool)] {
            text.components(separatedBy: "HTTP/1.1 ").dropFirst().map { (Int($0.prefix(3)) ?? 0, $0.contains("Connection: close")) }
        }
        let got = answers(text), gotUnread = answers(unreadText)
        for (what, a, all) in [("read", got, text), ("unread", gotUnread, unreadText)] {
            XCTAssertGreaterThanOrEqual(a.count, n, "\(what): every request taken before the stop is answered: \(all)")
            XCTAssertEqual(a.filter { $0.status != 200 }.count, 0, "\(what): \(all)")
            XCTAssertEqual(a.map(\.closes), Array(repeating: false, count: max(a.count - 1, 0)) + [true],
                           "\(what): only the last answer says the connection closes: \(all)")
        }
        // Applied exactly as answered: the late increments are answered only if they were
        // taken before the stop reached the connection (a race the stop may lose), and applied
        // only then.
        let client = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        func counter(_ key: String) async throws -> Int {
            guard let r = try await client.get(Array("dns/\(key)".utf8)) else { return 0 }
            return r.value.reduce(0) { $0 << 8 | Int($1) }
        }
        let taken = try await counter("taken"), unreadApplied = try await counter("unread"), lateApplied = try await counter("late")
        await client.close()
        XCTAssertEqual(taken, min(got.count, n), "increments applied on the read connection, answered \(min(got.count, n))")
        XCTAssertEqual(lateApplied, max(got.count - n, 0), "increments sent after the stop began: applied \(lateApplied), answered \(max(got.count - n, 0))")
        XCTAssertEqual(unreadApplied, gotUnread.count, "increments applied on the unread connection, answered \(gotUnread.count)")
    }

    /// What a connection receives until the server closes it (`closed`), or until `timeout`
    /// passes first. A reset after the server's close (bytes sent into a closed connection)
    /// reads as closed too: what came before it was read.
    static func readUntilClosed(_ fd: Int32, within timeout: Duration) -> (text: String, closed: Bool) {
        var tv = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let deadline = ContinuousClock.now + timeout
        var bytes = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while ContinuousClock.now < deadline {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                bytes += buffer[..<n]
            } else if n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                return (String(decoding: bytes, as: UTF8.self), true)
            }
        }
        return (String(decoding: bytes, as: UTF8.self), false)
    }

    /// The producer port holds to --max-connections-per-peer and --idle-timeout as every
    /// other listener does: one peer cannot fill the process's descriptors with idle
    /// connections, and the admin port stays reachable.
    func testTheProducerPortHoldsToTheConnectionLimits() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let (rest, port, admin) = try startRest(root: root.address, acl: try writeACL(),
                                                extra: ["--max-connections-per-peer", "3", "--idle-timeout", "1s"])
        var held = [Int32]()
        defer { for fd in held { close(fd) } }
        for _ in 0..<4 { held.append(try XCTUnwrap(Harness.connectLoopback(port: port))) }
        // The fourth from the same peer is closed at once, counted.
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(5)) { Harness.isClosedByServer(held[3]) }, "a fourth connection from one peer stayed open")
        XCTAssertEqual(metricValue(port: admin, "qs_connections_refused_total{listener=\"rest\",reason=\"per-peer\"}"), 1, rest.log)
        // The three idle ones are closed after the idle timeout.
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(10)) { held.prefix(3).allSatisfy(Harness.isClosedByServer) },
                      "an idle producer connection outlived --idle-timeout 1s")
        // And a producer gets through afterwards.
        XCTAssertEqual(try curl(["-u", "dns:dns-token", "http://127.0.0.1:\(port)/rpc/set?key=dns%2Fa&value=1"]).status, 200)
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
        let currentPort = PortBox(port)
        let producers = Producers(count: 4, port: currentPort)
        let acked = producers.acked
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
        producers.stop()
        // Only the acknowledged keys are accounted for: a request cut off by qsrest's kill
        // has no answer, and its batch may or may not have committed.
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

    /// A root that lost qsrest's acknowledged writes (an empty store at the same address)
    /// is not taken for a duplicate --source-id: qsrest halts, refuses every write, says why
    /// in /readyz and the log, counts it; a restart writes on from the root's position.
    func testARootThatLostAcknowledgedWritesHaltsQsrestUntilItIsRestarted() async throws {
        let socket = tmp.appendingPathComponent("root.sock").path
        var root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp, extraArgs: ["--unix", socket])
        let acl = try writeACL()
        var (rest, port, admin) = try startRest(root: "unix:\(socket)", acl: acl)
        let dns = ["-u", "dns:dns-token"]
        XCTAssertEqual(try curl(dns + ["http://127.0.0.1:\(port)/rpc/set?key=dns%2Fbefore&value=1"]).status, 200)
        // Another, empty root at the same address.
        try root.daemon.stop(signal: SIGKILL)
        root = try RootNode(data: tmp.appendingPathComponent("other"), logDir: tmp, extraArgs: ["--unix", socket])
        let refused = try curl(dns + ["http://127.0.0.1:\(port)/rpc/set?key=dns%2Fafter&value=1"])
        XCTAssertEqual(refused.status, 503, refused.body)
        XCTAssertTrue(refused.body.contains("qsrest has stopped writing"), refused.body)
        XCTAssertTrue(rest.log.contains("went back"), rest.log)
        XCTAssertEqual(metricValue(port: admin, "qs_rest_root_went_back_total"), 1)
        XCTAssertEqual(metricValue(port: admin, "qs_rest_conflicts_total"), 0)
        let ready = try XCTUnwrap(httpGet(port: admin, path: "/readyz"))
        XCTAssertEqual(ready.status, 503)
        XCTAssertTrue(ready.body.contains("has lost writes qsrest had acknowledged"), ready.body)
        // Later writes too, though the root takes writes.
        XCTAssertEqual(try curl(dns + ["http://127.0.0.1:\(port)/rpc/set?key=dns%2Flater&value=1"]).status, 503)
        let client = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        let after = try await client.get(Array("dns/after".utf8))
        XCTAssertNil(after)
        // The operator restarts it: it writes on from the root's position.
        XCTAssertEqual(try rest.stop(), 0)
        (rest, port, admin) = try startRest(root: "unix:\(socket)", acl: acl)
        XCTAssertEqual(try curl(dns + ["http://127.0.0.1:\(port)/rpc/set?key=dns%2Fafter&value=2"]).status, 200)
        let written = try await client.get(Array("dns/after".utf8))
        XCTAssertEqual(written?.value, Array("2".utf8))
        await client.close()
        XCTAssertEqual(try rest.stop(), 0)
    }

    /// GET /usage on the admin port: behind the admin token, the same figures as `qsctl
    /// usage --acl` (keys, values, per-record overhead; the keys no producer owns), kept
    /// for --usage-max-age and measured again on ?fresh=1.
    func testUsageEndpointAnswersAsQsctlUsageBehindTheAdminToken() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let acl = try writeACL()
        let adminToken = tmp.appendingPathComponent("admin-token")
        try Data("0123456789abcdef-admin".utf8).write(to: adminToken)
        let (rest, port, admin) = try startRest(root: root.address, acl: acl, extra: ["--admin-token-file", adminToken.path])
        let base = "http://127.0.0.1:\(port)"
        XCTAssertEqual(try curl(["-u", "dns:dns-token", "\(base)/rpc/set?key=dns%2Fa&value=12345"]).status, 200)
        XCTAssertEqual(try curl(["-u", "dns:dns-token", "\(base)/rpc/set?key=dns%2Fb&value=1&xt=4000000000"]).status, 200)
        XCTAssertEqual(try curl(["-u", "waf:waf-token", "\(base)/rpc/set?key=waf%2Fz&value=abc"]).status, 200)
        let client = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        _ = try await client.write([.set(key: Array("stray/1".utf8), value: Array("v".utf8), expiry: nil)], sourceID: "t")
        await client.close()

        let url = "http://127.0.0.1:\(admin)/usage"
        XCTAssertEqual(try curl([url]).status, 401)
        XCTAssertEqual(try curl(["-H", "Authorization: Bearer wrong-token-wrong-token", url]).status, 401)
        let auth = ["-H", "Authorization: Bearer 0123456789abcdef-admin"]
        let first = try curl(auth + [url])
        XCTAssertEqual(first.status, 200, first.body)
        let cli = try Harness.run("qsctl", ["--node", root.address, "usage", "--acl", acl.path, "--output", "json"])
        XCTAssertEqual(cli.status, 0, String(decoding: cli.stderr, as: UTF8.self))
        func object(_ text: String) throws -> [String: Any] {
            try XCTUnwrap(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], text)
        }
        let endpoint = try object(first.body), qsctl = try object(String(decoding: cli.stdout, as: UTF8.self))
        XCTAssertEqual(endpoint["producers"] as? NSDictionary, qsctl["producers"] as? NSDictionary)
        XCTAssertEqual(endpoint["unowned"] as? NSDictionary, qsctl["unowned"] as? NSDictionary)
        let dns = try XCTUnwrap((endpoint["producers"] as? [String: Any])?["dns"] as? [String: Int])
        // Two records: 10 key bytes, 6 value bytes; overhead 12 each, 8 more for the expiry.
        XCTAssertEqual(dns, ["keys": 2, "key_bytes": 10, "value_bytes": 6, "overhead_bytes": 32, "total_bytes": 48])
        XCTAssertEqual((endpoint["unowned"] as? [String: Any])?["keys"] as? Int, 1)
        XCTAssertEqual(endpoint["node"] as? String, root.address)

        // Kept: a new write is not seen until the report is older than --usage-max-age or
        // ?fresh=1 asks for a scan.
        XCTAssertEqual(try curl(["-u", "dns:dns-token", "\(base)/rpc/set?key=dns%2Fc&value=1"]).status, 200)
        let kept = try object(try curl(auth + [url]).body)
        XCTAssertEqual(((kept["producers"] as? [String: Any])?["dns"] as? [String: Int])?["keys"], 2)
        let fresh = try object(try curl(auth + [url + "?fresh=1"]).body)
        XCTAssertEqual(((fresh["producers"] as? [String: Any])?["dns"] as? [String: Int])?["keys"], 3)
        let table = try curl(auth + [url + "?format=table"])
        XCTAssertTrue(table.body.contains("dns\t3\t15\t7\t44\t66"), table.body)
        XCTAssertEqual(metricValue(port: admin, "qs_auth_failures_total{interface=\"admin\"}"), 2)
        XCTAssertEqual(try rest.stop(), 0)
    }

    /// KT's binary protocol (ukt's default set_bulk, 0xB8) carries no credential: the
    /// connection gets KT's error reply 0xBF and is closed, counted and logged once per peer
    /// with what to do; refused credentials are logged once per peer too, every one counted.
    func testBinaryProtocolAndRefusedCredentialsAreAnsweredCountedAndLoggedOncePerPeer() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let (rest, port, admin) = try startRest(root: root.address, acl: try writeACL())
        // ukt's set_bulk of one record: magic, flags, count, then db, key size, value size, xt, key, value.
        let setBulk: [UInt8] = [0xB8, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 5, 0, 0, 0, 1] + [0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]
            + Array("dns/x".utf8) + [0x31]
        for _ in 0..<3 {
            let fd = try XCTUnwrap(Harness.connectLoopback(port: port))
            _ = setBulk.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
            var answer = [UInt8](repeating: 0, count: 8)
            let n = answer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            XCTAssertEqual(n, 1)
            XCTAssertEqual(answer[0], 0xBF)
            XCTAssertEqual(answer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }, 0, "closed after the error reply")
            close(fd)
        }
        // Counted by the connection's task once the sniff has told it, which may come after
        // the client saw the reply and the close.
        try await waitFor("the three binary connections counted", timeout: .seconds(10), pollEvery: .milliseconds(10)) {
            metricValue(port: admin, "qs_rest_binary_refused_total") == 3
        }
        let base = "http://127.0.0.1:\(port)"
        for _ in 0..<3 { XCTAssertEqual(try curl(["-u", "dns:not-the-token", "\(base)/rpc/set?key=dns%2Fx&value=1"]).status, 401) }
        XCTAssertEqual(metricValue(port: admin, "qs_rest_auth_failures_total"), 3)
        XCTAssertEqual(try rest.stop(), 0)
        let log = rest.log
        XCTAssertEqual(log.components(separatedBy: "use HTTP RPC with a credential").count - 1, 1, log)
        XCTAssertTrue(log.contains("magic=0xB8"), log)
        XCTAssertEqual(log.components(separatedBy: "no valid producer credential").count - 1, 1, log)
    }

    /// With no root to take it, a write is answered 503 "not applied" within
    /// --commit-timeout (it waited for the connection's idle timeout, unanswered, and was
    /// committed when a root appeared: a producer's retry applied it twice); once a root
    /// answers, writes go through, and the refused one was never applied.
    func testWithNoRootAWriteIsAnsweredNotAppliedAndStaysUnapplied() async throws {
        let socket = tmp.appendingPathComponent("root.sock").path
        let (rest, port, admin) = try startRest(root: "unix:\(socket)", acl: try writeACL(), extra: ["--commit-timeout", "2s"])
        let refused = try curl(["-u", "dns:dns-token", "--max-time", "30", "http://127.0.0.1:\(port)/rpc/increment?key=dns%2Fcounter&num=1"])
        XCTAssertEqual(refused.status, 503, refused.body)
        XCTAssertTrue(refused.body.contains("not applied"), refused.body)
        XCTAssertEqual(httpGet(port: admin, path: "/readyz")?.status, 503)
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp, extraArgs: ["--unix", socket])
        try await waitFor("a write through the root that appeared", timeout: .seconds(30), pollEvery: .milliseconds(200)) {
            try self.curl(["-u", "dns:dns-token", "--max-time", "30", "http://127.0.0.1:\(port)/rpc/set?key=dns%2Fafter&value=1"]).status == 200
        }
        let client = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        let counter = try await client.get(Array("dns/counter".utf8))
        XCTAssertNil(counter, "the write answered 'not applied' was not applied later")
        let after = try await client.get(Array("dns/after".utf8))
        XCTAssertNotNil(after)
        await client.close()
        XCTAssertEqual(try rest.stop(), 0)
    }

    /// Refusals a producer can repeat at any rate (over its quota, a root that commits
    /// nothing) are each counted but logged at most once a window for their cause, the next
    /// line carrying how many were left out: a root outage under a producer fleet's load, or
    /// one producer hammering past its quota, cannot flood the log with a line a request.
    func testRepeatedRefusalsAreCountedEachAndLoggedOnceAWindow() async throws {
        let acl = try writeACL(Self.aclText + """

            [producers.slow]
            token_sha256 = "\(sha256Hex("slow-token"))"
            prefixes = ["slow/"]
            writes_per_second = 1
            """)
        let socket = tmp.appendingPathComponent("root.sock").path
        let (rest, port, admin) = try startRest(root: "unix:\(socket)", acl: acl,
                                                extra: ["--commit-timeout", "1s", "--quota-max-delay", "0s"])
        let base = "http://127.0.0.1:\(port)"
        func parallel(_ user: String, _ prefix: String, _ n: Int) throws -> [Int] {
            let r = try Harness.run("/usr/bin/curl", ["-s", "-o", "/dev/null", "-Z", "--parallel-max", "\(n)", "--max-time", "30",
                                                      "-w", "%{http_code}\n", "-u", user]
                                    + (0..<n).map { "\(base)/rpc/set?key=\(prefix)%2Fk\($0)&value=1" })
            return String(decoding: r.stdout, as: UTF8.self).split(separator: "\n").compactMap { Int($0) }
        }
        let outage = try parallel("dns:dns-token", "dns", 8)
        XCTAssertEqual(outage, Array(repeating: 503, count: 8), "no root: every write answered 503")
        let quota = try parallel("slow:slow-token", "slow", 8)
        XCTAssertEqual(quota.count, 8)
        XCTAssertGreaterThanOrEqual(quota.filter { $0 == 429 }.count, 6, "one write a second: the rest over quota: \(quota)")
        let metrics = httpGet(port: admin, path: "/metrics")?.body ?? ""
        XCTAssertEqual(metricValue(in: metrics, "qs_rest_failed_total{producer=\"dns\"}"), 8, metrics)
        let log = rest.log
        func lines(_ text: String) -> Int { log.components(separatedBy: "\n").filter { $0.contains(text) }.count }
        XCTAssertEqual(lines("write not committed in time"), 1, log)
        XCTAssertEqual(lines("write refused: over quota"), 1, log)
        XCTAssertEqual(try rest.stop(), 0)
    }

    /// A root that stops answering with a batch in flight: the request is answered 503
    /// within --commit-timeout, saying whether its batch was sent ("outcome unknown") or not
    /// ("not applied"); once the root answers again the write is there at most once, and
    /// not at all when the answer said "not applied".
    func testAHungRootGetsAnHonestAnswerWithinTheCommitTimeout() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        // An idle timeout shorter than the commit timeout: a whole request waiting for its
        // commit is neither idle nor trickling, and is answered (before, its connection was
        // closed unanswered at the idle timeout).
        let (rest, port, admin) = try startRest(root: root.address, acl: try writeACL(), extra: ["--commit-timeout", "3s", "--idle-timeout", "1s"])
        let base = "http://127.0.0.1:\(port)"
        XCTAssertEqual(try curl(["-u", "dns:dns-token", "\(base)/rpc/set?key=dns%2Fwarm&value=1"]).status, 200)
        kill(root.daemon.pid, SIGSTOP)
        var resumed = false
        defer { if !resumed { kill(root.daemon.pid, SIGCONT) } }
        let answer = try curl(["-u", "dns:dns-token", "--max-time", "30", "\(base)/rpc/increment?key=dns%2Fcounter&num=1"])
        XCTAssertEqual(httpGet(port: admin, path: "/readyz")?.status, 503)
        kill(root.daemon.pid, SIGCONT)
        resumed = true
        XCTAssertEqual(answer.status, 503, answer.body)
        let unknown = answer.body.contains("outcome unknown"), notApplied = answer.body.contains("not applied")
        XCTAssertTrue(unknown || notApplied, answer.body)
        // Ready again once the root answers, before any write: behind a readiness-gated
        // balancer no write would come to clear it.
        try await waitFor("/readyz 200 with no write since", timeout: .seconds(40), pollEvery: .milliseconds(200)) {
            httpGet(port: admin, path: "/readyz")?.status == 200
        }
        try await waitFor("writes going through again", timeout: .seconds(30), pollEvery: .milliseconds(200)) {
            try self.curl(["-u", "dns:dns-token", "--max-time", "30", "\(base)/rpc/set?key=dns%2Fafter&value=1"]).status == 200
        }
        let client = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        let counter = try await client.get(Array("dns/counter".utf8))
        await client.close()
        if let counter {
            XCTAssertFalse(notApplied, "answered 'not applied' but applied")
            XCTAssertEqual(counter.value, [0, 0, 0, 0, 0, 0, 0, 1], "applied once")
        }
        XCTAssertEqual(try rest.stop(), 0)
    }

    /// --commit-timeout counts from a request's arrival, and SIGTERM ends the wait: with the
    /// root hung and a long commit timeout, qsrest stopped within --shutdown-timeout answers
    /// the waiting request ("qsrest stopped before the root answered") and exits, instead of
    /// holding it (and itself) until the commit timeout passed twice.
    func testAStopWhileTheRootHangsAnswersTheWaitingRequestAndExits() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let (rest, port, admin) = try startRest(root: root.address, acl: try writeACL(),
                                                extra: ["--commit-timeout", "120s", "--shutdown-timeout", "2s", "--batch-interval", "500ms"])
        let base = "http://127.0.0.1:\(port)"
        XCTAssertEqual(try curl(["-u", "dns:dns-token", "\(base)/rpc/set?key=dns%2Fwarm&value=1"]).status, 200)
        kill(root.daemon.pid, SIGSTOP)
        defer { kill(root.daemon.pid, SIGCONT) }
        let waiting = Task.detached {
            try Harness.run("/usr/bin/curl", ["-s", "-i", "-w", "\n%{http_code}", "-u", "dns:dns-token", "--max-time", "100",
                                              "\(base)/rpc/set?key=dns%2Fwaited&value=1"]).stdout
        }
        // "has waited": a call to the root (the write's batch) has been waiting over 4 s.
        try await waitFor("the write's batch waiting on the hung root", timeout: .seconds(30), pollEvery: .milliseconds(100)) {
            httpGet(port: admin, path: "/readyz")?.body.contains("has waited") == true
        }
        // A second write, queued behind the hung batch, is answered at the stop too.
        let queued = Task.detached {
            try Harness.run("/usr/bin/curl", ["-s", "-w", "\n%{http_code}", "-u", "dns:dns-token", "--max-time", "100",
                                              "\(base)/rpc/set?key=dns%2Fqueued&value=1"]).stdout
        }
        try await waitFor("the second write queued", timeout: .seconds(30), pollEvery: .milliseconds(100)) {
            metricValue(port: admin, "qs_rest_pending_writes") == 1
        }
        XCTAssertEqual(try rest.stop(signal: SIGTERM, timeout: .seconds(20)), 75,
                       "stopped within --shutdown-timeout, not --commit-timeout, saying (75) that writes went unanswered by the root")
        XCTAssertTrue(rest.log.contains("stopped before the root answered some writes") && rest.log.contains("requests=2"), rest.log)
        let waited = String(decoding: try await waiting.value, as: UTF8.self)
        // Answered while draining: the connection closes after it, and the answer says so.
        XCTAssertTrue(waited.contains("Connection: close"), waited)
        for answer in [waited, String(decoding: try await queued.value, as: UTF8.self)] {
            XCTAssertTrue(answer.hasSuffix("503"), answer)
            // qsrest's own long explanation arrives readable, not URL-encoded.
            XCTAssertTrue(answer.contains("qsrest stopped before the root answered") || answer.contains("shutting down"), answer)
        }
    }

    /// The reasons qsrest gives name what happened: a root stopped (not closing anything)
    /// is never said to have closed the connection, and a root gone for good after a batch
    /// failed reads first as not connected, with that failure after it.
    func testReasonsNameWhatHappenedToTheRoot() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        // An idle timeout shorter than the commit timeout: a whole request waiting for its
        // commit is neither idle nor trickling, and is answered (before, its connection was
        // closed unanswered at the idle timeout).
        let (rest, port, admin) = try startRest(root: root.address, acl: try writeACL(), extra: ["--commit-timeout", "3s", "--idle-timeout", "1s"])
        let base = "http://127.0.0.1:\(port)"
        XCTAssertEqual(try curl(["-u", "dns:dns-token", "\(base)/rpc/set?key=dns%2Fwarm&value=1"]).status, 200)
        kill(root.daemon.pid, SIGSTOP)
        var killed = false
        defer { if !killed { kill(root.daemon.pid, SIGCONT) } }
        for i in 0..<3 {
            let answer = try curl(["-u", "dns:dns-token", "--max-time", "30", "\(base)/rpc/set?key=dns%2Fk\(i)&value=1"])
            XCTAssertEqual(answer.status, 503, answer.body)
            XCTAssertFalse(answer.body.contains("the node closed the connection"), answer.body)
        }
        kill(root.daemon.pid, SIGKILL)
        killed = true
        let notConnected = await Harness.eventually(timeout: .seconds(30), pollEvery: .milliseconds(100)) {
            httpGet(port: admin, path: "/readyz")?.body.hasPrefix("not connected") == true
        }
        let body = httpGet(port: admin, path: "/readyz")?.body ?? ""
        XCTAssertTrue(notConnected, body)
        XCTAssertTrue(body.contains("the last batch failed"), body)
        XCTAssertEqual(try rest.stop(), 0)
    }

    /// A key a producer chose, logged with its refusal, cannot split or forge a text log
    /// line: its control characters are written as escapes.
    func testTextLogsEscapeWhatPeersSend() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let (rest, port, _) = try startRest(root: root.address, acl: try writeACL())
        let r = try curl(["-u", "dns:dns-token", "-G", "--data-urlencode", "key=waf/x\tforged\nlevel=critical", "--data-urlencode", "value=1",
                          "http://127.0.0.1:\(port)/rpc/set"])
        XCTAssertEqual(r.status, 403, r.body)
        XCTAssertEqual(try rest.stop(), 0)
        let log = rest.log
        XCTAssertTrue(log.contains("waf/x\\tforged\\nlevel=critical"), log)
        XCTAssertFalse(log.split(separator: "\n").contains { $0.hasPrefix("level=critical") }, log)
    }

    /// A request without a valid credential is answered from its head: its body (here 30 MB
    /// announced, 64 KiB sent) is never gathered, so unauthenticated peers cannot make
    /// qsrest hold bodies; a declared body over --max-body is answered 413 the same way.
    func testRequestsAreRefusedFromTheirHeadsBeforeTheirBodies() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let (rest, port, admin) = try startRest(root: root.address, acl: try writeACL(), extra: ["--max-body", "1MiB"])
        func answerBeforeTheBody(_ head: String) throws -> String {
            let fd = try XCTUnwrap(Harness.connectLoopback(port: port))
            defer { close(fd) }
            var tv = timeval(tv_sec: 10, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            let bytes = Array(head.utf8) + [UInt8](repeating: 0x61, count: 65536)
            _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
            var answer = [UInt8](repeating: 0, count: 4096)
            let n = answer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            return n > 0 ? String(decoding: answer[..<n], as: UTF8.self) : "no answer (\(n))"
        }
        let anonymous = try answerBeforeTheBody("POST /rpc/set?key=dns%2Fx HTTP/1.1\r\nHost: q\r\nContent-Length: 30000000\r\n\r\n")
        XCTAssertTrue(anonymous.hasPrefix("HTTP/1.1 401"), anonymous)
        XCTAssertTrue(anonymous.lowercased().contains("connection: close"), anonymous)
        let basic = Data("dns:dns-token".utf8).base64EncodedString()
        let large = try answerBeforeTheBody("POST /rpc/set?key=dns%2Fx HTTP/1.1\r\nHost: q\r\nAuthorization: Basic \(basic)\r\nContent-Length: 30000000\r\n\r\n")
        XCTAssertTrue(large.hasPrefix("HTTP/1.1 413"), large)
        XCTAssertEqual(metricValue(port: admin, "qs_rest_auth_failures_total"), 1)
        // A producer with its credential still writes.
        XCTAssertEqual(try curl(["-u", "dns:dns-token", "http://127.0.0.1:\(port)/rpc/set?key=dns%2Fy&value=1"]).status, 200)
        XCTAssertEqual(try rest.stop(), 0)
    }

    /// A write the root refuses as larger than its frame limit is answered 413 to its
    /// producer, and /readyz stays ready (it says nothing about the root); a root that
    /// stops answering with a batch in flight makes /readyz say so while the request waits,
    /// and the write commits once the root answers again.
    func testReadinessTellsABatchTooLargeFromARootThatStoppedAnswering() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp, extraArgs: ["--max-frame-bytes", "64KiB"])
        let (rest, port, admin) = try startRest(root: root.address, acl: try writeACL())
        let base = "http://127.0.0.1:\(port)"
        XCTAssertEqual(try curl(["-u", "dns:dns-token", "\(base)/rpc/set?key=dns%2Fsmall&value=1"]).status, 200)
        let big = tmp.appendingPathComponent("big")
        try Data(repeating: 0x61, count: 100_000).write(to: big)
        let tooLarge = try curl(["-u", "dns:dns-token", "-X", "PUT", "--data-binary", "@\(big.path)", "\(base)/dns%2Fbig"])
        XCTAssertEqual(tooLarge.status, 413, tooLarge.body)
        XCTAssertTrue(tooLarge.body.contains("--max-frame-bytes"), tooLarge.body)
        // The root closes a connection that sent a frame over its limit; the writer's
        // keepalive connects again at once, and nothing marks the root as failing.
        let readyAgain = await Harness.eventually(timeout: .seconds(10), pollEvery: .milliseconds(100)) {
            httpGet(port: admin, path: "/readyz")?.status == 200
        }
        XCTAssertTrue(readyAgain, httpGet(port: admin, path: "/readyz")?.body ?? "")

        kill(root.daemon.pid, SIGSTOP)
        var resumed = false
        defer { if !resumed { kill(root.daemon.pid, SIGCONT) } }
        let waiting = Task.detached {
            try Harness.run("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-u", "dns:dns-token", "--max-time", "60",
                                              "\(base)/rpc/set?key=dns%2Fwaited&value=1"]).stdout
        }
        let unready = await Harness.eventually(timeout: .seconds(30), pollEvery: .milliseconds(200)) {
            guard let r = httpGet(port: admin, path: "/readyz") else { return false }
            return r.status == 503 && (r.body.contains("answer") || r.body.contains("has waited"))
        }
        XCTAssertTrue(unready, httpGet(port: admin, path: "/readyz")?.body ?? "")
        kill(root.daemon.pid, SIGCONT)
        resumed = true
        let answered = String(decoding: try await waiting.value, as: UTF8.self)
        XCTAssertEqual(answered, "200")
        let ready = await Harness.eventually(timeout: .seconds(30)) { httpGet(port: admin, path: "/readyz")?.status == 200 }
        XCTAssertTrue(ready, httpGet(port: admin, path: "/readyz")?.body ?? "")
        XCTAssertEqual(try rest.stop(), 0)
    }

    /// PUTs 700 KB values (incompressible) through qsrest on `port` until one is not
    /// answered 201 (a root with a small --map-size fills); returns the value's file and
    /// that answer (nil: the store never filled).
    func fillUntilRefused(port: Int) throws -> (value: URL, refused: (status: Int, body: String)?) {
        let value = tmp.appendingPathComponent("value")
        try Data((0..<700_000).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 13) }).write(to: value)
        for i in 0..<12 {
            let r = try curl(["-u", "dns:dns-token", "--max-time", "30", "-X", "PUT", "--data-binary", "@\(value.path)",
                              "http://127.0.0.1:\(port)/dns%2Fk\(i)"])
            if r.status != 201 { return (value, r) }
        }
        return (value, nil)
    }

    /// A root out of room answers every try with storage-full (nothing written): qsrest
    /// answers the batch's requests 503 at once, naming it, and /readyz says so, instead of
    /// retrying while its producers wait for a minute; a write that fits goes through.
    func testARootOutOfRoomIsAnswered503AtOnceAndReadinessSaysIt() async throws {
        try XCTSkipIf(ProcessInfo.processInfo.environment["QS_STORE_ENGINE"] == "rocksdb", "LMDB only: --map-size bounds an LMDB store")
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp, extraArgs: ["--map-size", "4MiB"])
        let (rest, port, admin) = try startRest(root: root.address, acl: try writeACL())
        let (_, refused) = try fillUntilRefused(port: port)
        XCTAssertEqual(refused?.status, 503, refused?.body ?? "the store never filled")
        XCTAssertTrue(refused?.body.contains("storage-full") == true, refused?.body ?? "")
        let unready = httpGet(port: admin, path: "/readyz")
        XCTAssertEqual(unready?.status, 503)
        XCTAssertTrue(unready?.body.contains("storage-full") == true, unready?.body ?? "")
        XCTAssertEqual(try curl(["-u", "dns:dns-token", "http://127.0.0.1:\(port)/rpc/set?key=dns%2Fsmall&value=1"]).status, 200)
        XCTAssertEqual(httpGet(port: admin, path: "/readyz")?.status, 200)
        XCTAssertEqual(try rest.stop(), 0)
    }

    /// A root out of room restarted with room (a larger --map-size): /readyz says ready once
    /// qsrest has connected to it again, without a write (behind a readiness-gated balancer
    /// none would come); the next write commits.
    func testReadinessComesBackWhenARootOutOfRoomIsRestartedWithRoom() async throws {
        try XCTSkipIf(ProcessInfo.processInfo.environment["QS_STORE_ENGINE"] == "rocksdb", "LMDB only: --map-size bounds an LMDB store")
        let socket = tmp.appendingPathComponent("root.sock").path
        var root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp, extraArgs: ["--map-size", "4MiB", "--unix", socket])
        let (rest, port, admin) = try startRest(root: "unix:" + socket, acl: try writeACL())
        let (value, refused) = try fillUntilRefused(port: port)
        XCTAssertEqual(refused?.status, 503, refused?.body ?? "the store never filled")
        XCTAssertEqual(httpGet(port: admin, path: "/readyz")?.status, 503)
        try root.daemon.stop()
        root = try RootNode(data: root.data, logDir: tmp, extraArgs: ["--map-size", "64MiB", "--unix", socket])
        let ready = await Harness.eventually(timeout: .seconds(30)) { httpGet(port: admin, path: "/readyz")?.status == 200 }
        XCTAssertTrue(ready, httpGet(port: admin, path: "/readyz")?.body ?? "no answer")
        XCTAssertEqual(try curl(["-u", "dns:dns-token", "--max-time", "30", "-X", "PUT", "--data-binary", "@\(value.path)",
                                 "http://127.0.0.1:\(port)/dns%2Fbig"]).status, 201)
        XCTAssertEqual(try rest.stop(), 0)
    }

    /// A root that comes back without the writes it confirmed (wiped, restored from a
    /// backup) is named by /readyz while qsrest is idle, before any producer's write
    /// meets it (which then halts qsrest, as before).
    func testAnIdleQsrestSaysSoWhenItsRootComesBackWithoutItsWrites() async throws {
        let socket = tmp.appendingPathComponent("root.sock").path
        var root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp, extraArgs: ["--unix", socket])
        let (rest, port, admin) = try startRest(root: "unix:" + socket, acl: try writeACL())
        XCTAssertEqual(try curl(["-u", "dns:dns-token", "http://127.0.0.1:\(port)/rpc/set?key=dns%2Fa&value=1"]).status, 200)
        try root.daemon.stop()
        root = try RootNode(data: tmp.appendingPathComponent("wiped"), logDir: tmp, extraArgs: ["--unix", socket])
        try await waitFor("/readyz naming the lost writes", timeout: .seconds(30), pollEvery: .milliseconds(100)) {
            guard let r = httpGet(port: admin, path: "/readyz") else { return false }
            return r.status == 503 && r.body.contains("has lost writes it confirmed")
        }
        let refused = try curl(["-u", "dns:dns-token", "http://127.0.0.1:\(port)/rpc/set?key=dns%2Fb&value=1"])
        XCTAssertEqual(refused.status, 503, refused.body)
        XCTAssertEqual(try rest.stop(), 0)
    }

    /// qsrest started against a single root address that takes no writes (a root demoted
    /// by a cut-over, a compatible mirror): its producers are answered 503 at once, naming
    /// it, as when the root is demoted while in use, not after --commit-timeout; promoted
    /// again, writes go through.
    func testASingleRootThatTakesNoWritesIsAnswered503AtOnce() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let demote = try Harness.run("qsctl", ["--node", root.address, "demote"])
        XCTAssertEqual(demote.status, 0, String(decoding: demote.stderr, as: UTF8.self))
        let (rest, port, admin) = try startRest(root: root.address, acl: try writeACL(), extra: ["--commit-timeout", "60s"])
        let refused = try curl(["-u", "dns:dns-token", "--max-time", "20", "-X", "PUT", "--data-binary", "x", "http://127.0.0.1:\(port)/dns%2Fk"])
        XCTAssertEqual(refused.status, 503, refused.body)
        XCTAssertTrue(refused.body.contains("compatible mirror") && refused.body.contains("nothing was acknowledged"), refused.body)
        let ready = httpGet(port: admin, path: "/readyz")
        XCTAssertEqual(ready?.status, 503)
        XCTAssertTrue(ready?.body.contains("compatible mirror") ?? false, ready?.body ?? "no answer")
        let promote = try Harness.run("qsctl", ["--node", root.address, "promote", "--force"])
        XCTAssertEqual(promote.status, 0, String(decoding: promote.stderr, as: UTF8.self))
        XCTAssertEqual(try curl(["-u", "dns:dns-token", "--max-time", "20", "-X", "PUT", "--data-binary", "x", "http://127.0.0.1:\(port)/dns%2Fk"]).status, 201)
        XCTAssertEqual(try rest.stop(), 0)
    }

    /// A PUT of a 1 MiB body to `key` sent as `producer` but for its last byte: the
    /// connection, to close.
    func holdingBody(port: Int, key: String, producer: String = "dns") throws -> Int32 {
        let auth = "Authorization: Basic \(Data("\(producer):\(producer)-token".utf8).base64EncodedString())\r\n"
        let fd = try XCTUnwrap(Harness.connectLoopback(port: port))
        let head = Array("PUT /\(key) HTTP/1.1\r\nHost: x\r\n\(auth)Content-Length: \(1 << 20)\r\n\r\n".utf8)
        let body = [UInt8](repeating: 0x61, count: (1 << 20) - 1)
        for part in [head, body] {
            var sent = 0
            while sent < part.count {
                let n = part[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                XCTAssertGreaterThan(n, 0)
                if n <= 0 { break }
                sent += n
            }
        }
        return fd
    }

    /// One producer's bodies arriving are held to its share of --max-arriving-bytes (all of
    /// it but one --max-body by default): past it that producer is answered 503 at once,
    /// while another producer's writes go through (eight slow uploads of one producer took
    /// the whole budget).
    func testOneProducersArrivingBodiesAreHeldToItsShare() async throws {
        let t = try await thirdBodyWhileTwoAreHeld(["--max-body", "1MiB", "--max-arriving-bytes", "3MiB"])
        XCTAssertEqual(t.refused.status, 503, t.refused.body)
        XCTAssertTrue(t.refused.body.contains("--max-arriving-bytes-per-producer"), t.refused.body)
        XCTAssertEqual(metricValue(port: t.admin, "qs_rest_arriving_bytes_refusals_total"), 1)
        XCTAssertTrue(t.rest.log.contains("producer=dns"), t.rest.log)
        let other = try curl(["-u", "waf:waf-token", "--max-time", "20", "-X", "PUT", "--data-binary", "@\(t.value.path)",
                              "http://127.0.0.1:\(t.port)/waf%2Fx"])
        XCTAssertEqual(other.status, 201, other.body)
        for fd in t.held { shutdown(fd, Int32(SHUT_RDWR)) }
        XCTAssertEqual(try t.rest.stop(), 0)
    }

    /// qsrest (with `extra`) and producer dns holding two 1 MiB bodies but for their last
    /// byte: the answer to a third body of dns (512 KiB, the bytes in `value`); the root is
    /// returned to be kept (it stops when let go).
    func thirdBodyWhileTwoAreHeld(_ extra: [String]) async throws
        -> (root: RootNode, rest: DaemonProcess, port: Int, admin: Int, held: [Int32], refused: (status: Int, body: String), value: URL) {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let (rest, port, admin) = try startRest(root: root.address, acl: try writeACL(), extra: extra)
        let held = [try holdingBody(port: port, key: "dns%2Fheld1"), try holdingBody(port: port, key: "dns%2Fheld2")]
        addTeardownBlock { for fd in held { close(fd) } }
        try await waitFor("two bodies held", timeout: .seconds(20)) {
            (metricValue(port: admin, "qs_rest_arriving_bytes") ?? 0) >= Double(2 * ((1 << 20) - 1))
        }
        let value = tmp.appendingPathComponent("value")
        try Data(repeating: 0x62, count: 512 << 10).write(to: value)
        let refused = try curl(["-u", "dns:dns-token", "--max-time", "20", "-X", "PUT", "--data-binary", "@\(value.path)",
                                "http://127.0.0.1:\(port)/dns%2Fthird"])
        return (root, rest, port, admin, held, refused, value)
    }

    /// Bodies arriving on all connections together are held to --max-arriving-bytes: past it
    /// a request is answered 503 at once (before the rest of its body), counted and logged;
    /// once the other bodies go, writes go through. Without it, 60 producer connections
    /// each sending a 30 MB body and holding back its last byte held 1.75 GB of qsrest.
    func testBodiesArrivingOnAllConnectionsAreHeldToOneBudget() async throws {
        let t = try await thirdBodyWhileTwoAreHeld(["--max-body", "1MiB", "--max-arriving-bytes", "2MiB", "--max-arriving-bytes-per-producer", "2MiB"])
        XCTAssertEqual(t.refused.status, 503, t.refused.body)
        XCTAssertTrue(t.refused.body.contains("--max-arriving-bytes"), t.refused.body)
        XCTAssertEqual(metricValue(port: t.admin, "qs_rest_arriving_bytes_refusals_total"), 1)
        XCTAssertTrue(t.rest.log.contains("request refused: the bodies arriving on all connections"), t.rest.log)
        // The held bodies go (their connections shut): the budget is free again.
        for fd in t.held { shutdown(fd, Int32(SHUT_RDWR)) }
        try await waitFor("the budget to empty", timeout: .seconds(20)) { metricValue(port: t.admin, "qs_rest_arriving_bytes") == 0 }
        let ok = try curl(["-u", "dns:dns-token", "--max-time", "20", "-X", "PUT", "--data-binary", "@\(t.value.path)",
                           "http://127.0.0.1:\(t.port)/dns%2Fthird"])
        XCTAssertEqual(ok.status, 201, ok.body)
        XCTAssertEqual(try t.rest.stop(), 0)
    }

    /// A set_bulk body of `records` short records (`dns/<n>` set to empty), as a file for curl.
    func shortRecords(_ records: Int, name: String) throws -> URL {
        var body = [UInt8]()
        for i in 0..<records { body += Array("_dns/\(String(i, radix: 16))\t\n".utf8) }
        let url = tmp.appendingPathComponent(name)
        try Data(body).write(to: url)
        return url
    }

    /// What a request's parse builds is held against the arriving bytes while it runs: a
    /// body of short records (about 30 times its bytes built: 30 MB of 2.5 M records took
    /// qsrest to 813 MB) that could never fit its producer's share is refused 413 before its
    /// parse, saying how many would fit; a body that fits goes through and is released.
    func testAParseIsHeldAgainstTheArrivingBytes() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let (rest, port, admin) = try startRest(root: root.address, acl: try writeACL(),
                                                extra: ["--max-body", "4MiB", "--max-arriving-bytes", "16MiB"])
        let base = "http://127.0.0.1:\(port)/rpc/set_bulk"
        let tsv = ["-H", "Content-Type: text/tab-separated-values"]
        // 200,000 records (~2 MB): far more than 12 MiB, the producer's share, when parsed.
        let big = try curl(["-u", "dns:dns-token", "--max-time", "30"] + tsv + ["--data-binary", "@\(try shortRecords(200_000, name: "big.tsv").path)", base])
        XCTAssertEqual(big.status, 413, big.body)
        XCTAssertTrue(big.body.contains("send fewer records a request") && big.body.contains("--max-arriving-bytes-per-producer"), big.body)
        XCTAssertEqual(metricValue(port: admin, "qs_rest_arriving_bytes_refusals_total"), 1)
        XCTAssertTrue(rest.log.contains("its parse would build more than the arriving budget holds"), rest.log)
        // 10,000 fit, are written, and what was held for them is given back.
        let fits = try curl(["-u", "dns:dns-token", "--max-time", "30"] + tsv + ["--data-binary", "@\(try shortRecords(10_000, name: "fits.tsv").path)", base])
        XCTAssertEqual(fits.status, 200, fits.body)
        XCTAssertTrue(fits.body.contains("num\t10000"), fits.body)
        try await waitFor("the arriving bytes given back", timeout: .seconds(10)) { metricValue(port: admin, "qs_rest_arriving_bytes") == 0 }
        let client = try await QSClient.connect(host: "127.0.0.1", port: root.port)
        let last = try await client.get(Array("dns/\(String(9_999, radix: 16))".utf8))
        XCTAssertEqual(last?.value, [])
        XCTAssertEqual(try rest.stop(), 0)
    }

    /// --max-pending-bytes counts what waiting writes hold in memory, not their payload
    /// alone: behind 20,000 short writes waiting for a batch (180 KB of keys, 3 MB held;
    /// another 20,000 in the batch sent to a stopped root), one more write is refused 503
    /// at a 1 MiB limit; all are committed once the root goes on.
    func testPendingWritesAreCountedByWhatTheyHold() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let (rest, port, admin) = try startRest(root: root.address, acl: try writeACL(),
                                                extra: ["--max-pending-bytes", "1MiB", "--commit-timeout", "60s", "--batch-max-ops", "100000"])
        XCTAssertEqual(try curl(["-u", "dns:dns-token", "http://127.0.0.1:\(port)/rpc/set?key=dns%2Fwarm&value=1"]).status, 200)
        kill(root.daemon.pid, SIGSTOP)
        var stopped = true
        defer { if stopped { kill(root.daemon.pid, SIGCONT) } }
        let records = try shortRecords(20_000, name: "short.tsv")
        let bulk = { @Sendable in
            Task.detached {
                try Harness.run("/usr/bin/curl", ["-s", "-w", "\n%{http_code}", "-u", "dns:dns-token", "--max-time", "60",
                                                  "-H", "Content-Type: text/tab-separated-values", "--data-binary", "@\(records.path)",
                                                  "http://127.0.0.1:\(port)/rpc/set_bulk"]).stdout
            }
        }
        // The first is sent to the stopped root; the second waits behind it.
        let sent = bulk()
        // "has waited": the batch holding it was sent, and has waited over 4 s for the root.
        try await waitFor("the first bulk sent", timeout: .seconds(30), pollEvery: .milliseconds(100)) {
            httpGet(port: admin, path: "/readyz")?.body.contains("has waited") == true
        }
        let waiting = bulk()
        try await waitFor("the second bulk waiting", timeout: .seconds(30)) { (metricValue(port: admin, "qs_rest_pending_writes") ?? 0) >= 20_000 }
        let refused = try curl(["-u", "dns:dns-token", "--max-time", "30", "http://127.0.0.1:\(port)/rpc/set?key=dns%2Fmore&value=1"])
        XCTAssertEqual(refused.status, 503, refused.body)
        XCTAssertTrue(refused.body.contains("--max-pending-bytes"), refused.body)
        XCTAssertEqual(metricValue(port: admin, "qs_rest_busy_refusals_total"), 1)
        kill(root.daemon.pid, SIGCONT)
        stopped = false
        for task in [sent, waiting] {
            let answer = String(decoding: try await task.value, as: UTF8.self)
            XCTAssertTrue(answer.hasSuffix("200") && answer.contains("num\t20000"), answer)
        }
        XCTAssertEqual(try rest.stop(), 0)
    }

    /// A root, qsrest on it with one write committed and /readyz 200, then the root demoted.
    func demotedAfterAWrite() throws -> (RootNode, DaemonProcess, Int, Int) {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let (rest, port, admin) = try startRest(root: root.address, acl: try writeACL())
        XCTAssertEqual(try curl(["-u", "dns:dns-token", "http://127.0.0.1:\(port)/rpc/set?key=dns%2Fa&value=1"]).status, 200)
        XCTAssertEqual(httpGet(port: admin, path: "/readyz")?.status, 200)
        let demote = try Harness.run("qsctl", ["--node", root.address, "demote"])
        XCTAssertEqual(demote.status, 0, String(decoding: demote.stderr, as: UTF8.self))
        return (root, rest, port, admin)
    }

    /// The root promoted again: /readyz 200 without a write first (behind a readiness-gated
    /// balancer none would come), then a write to `dns/KEY` goes through; qsrest stopped.
    func promotedReadyAndWritten(_ root: RootNode, _ rest: DaemonProcess, port: Int, admin: Int, key: String) throws {
        let promote = try Harness.run("qsctl", ["--node", root.address, "promote", "--force"])
        XCTAssertEqual(promote.status, 0, String(decoding: promote.stderr, as: UTF8.self))
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { httpGet(port: admin, path: "/readyz")?.status == 200 },
                      httpGet(port: admin, path: "/readyz")?.body ?? "no answer")
        XCTAssertEqual(try curl(["-u", "dns:dns-token", "--max-time", "20", "http://127.0.0.1:\(port)/rpc/set?key=dns%2F\(key)&value=1"]).status, 200)
        XCTAssertEqual(try rest.stop(), 0)
    }

    /// A root demoted while no producer writes: qsrest learned of it only at the next write
    /// and said ready meanwhile (200 for as long as nobody wrote). Its keepalive asks the
    /// root's write role every few seconds: /readyz says 503 naming it, and 200 again once
    /// the root is promoted, still without a write.
    func testAnIdleQsrestSaysNotReadyWhenItsRootIsDemotedWithoutAWrite() async throws {
        let (root, rest, port, admin) = try demotedAfterAWrite()
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { httpGet(port: admin, path: "/readyz")?.status == 503 },
                      httpGet(port: admin, path: "/readyz")?.body ?? "no answer")
        let body = httpGet(port: admin, path: "/readyz")?.body ?? ""
        XCTAssertTrue(body.contains("takes no writes now: it is a compatible mirror"), body)
        try promotedReadyAndWritten(root, rest, port: port, admin: admin, key: "b")
    }

    /// One write refused by a single root demoted since: /readyz stays 503 naming it while
    /// the root answers qsrest's keepalives (it went back to 200 a second later, every write
    /// still refused), until a write commits again.
    func testADemotedRootKeepsReadinessFailingThoughItAnswers() async throws {
        let (root, rest, port, admin) = try demotedAfterAWrite()
        XCTAssertEqual(try curl(["-u", "dns:dns-token", "--max-time", "20", "http://127.0.0.1:\(port)/rpc/set?key=dns%2Fb&value=1"]).status, 503)
        // Several keepalive rounds (one a second) answered by the demoted root.
        let until = ContinuousClock.now + .seconds(4)
        while ContinuousClock.now < until {
            let ready = httpGet(port: admin, path: "/readyz")
            XCTAssertEqual(ready?.status, 503, ready?.body ?? "no answer")
            if ready?.status != 503 { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        XCTAssertTrue(httpGet(port: admin, path: "/readyz")?.body.contains("takes no writes") ?? false)
        // Promoted again: ready without a write first (behind a readiness-gated balancer
        // none would come), then writes go through.
        try promotedReadyAndWritten(root, rest, port: port, admin: admin, key: "c")
    }

    /// Every root listed in --root refusing writes as not writable (a cut-over left only
    /// demoted roots and replicas there): a write given up at --commit-timeout is answered
    /// "not applied", as nothing was (it said "outcome unknown … may still be applied").
    func testWritesRefusedByEveryListedRootAreAnsweredNotApplied() async throws {
        let a = try RootNode(data: tmp.appendingPathComponent("a"), logDir: tmp)
        let b = try RootNode(data: tmp.appendingPathComponent("b"), logDir: tmp)
        let (rest, port, _) = try startRest(root: "\(a.address),\(b.address)", acl: try writeACL(), extra: ["--commit-timeout", "3s"])
        XCTAssertEqual(try curl(["-u", "dns:dns-token", "http://127.0.0.1:\(port)/rpc/set?key=dns%2Fa&value=1"]).status, 200)
        for node in [a, b] {
            let demote = try Harness.run("qsctl", ["--node", node.address, "demote"])
            XCTAssertEqual(demote.status, 0, String(decoding: demote.stderr, as: UTF8.self))
        }
        let refused = try curl(["-u", "dns:dns-token", "--max-time", "20", "http://127.0.0.1:\(port)/rpc/set?key=dns%2Fb&value=1"])
        XCTAssertEqual(refused.status, 503, refused.body)
        XCTAssertTrue(refused.body.contains("not applied") && !refused.body.contains("outcome unknown"), refused.body + rest.log)
        XCTAssertEqual(try rest.stop(), 0)
    }

    /// The root demoted while producers write: every request gets an error (never a false
    /// success), /readyz says why, and nothing acknowledged is lost; promoted again, writes
    /// go through again on their own.
    func testARootDemotedUnderLoadGetsErrorsNotFalseSuccessAndWritesResumeOnPromote() async throws {
        let root = try RootNode(data: tmp.appendingPathComponent("root"), logDir: tmp)
        let (rest, port, admin) = try startRest(root: root.address, acl: try writeACL())
        let producers = Producers(count: 4, port: port)
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { producers.acked.count >= 50 })
        let demote = try Harness.run("qsctl", ["--node", root.address, "demote"])
        XCTAssertEqual(demote.status, 0, String(decoding: demote.stderr, as: UTF8.self))
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { producers.refused.count >= 20 }, rest.log)
        let ready = httpGet(port: admin, path: "/readyz")
        XCTAssertEqual(ready?.status, 503)
        XCTAssertTrue(ready?.body.contains("takes no writes") ?? false, ready?.body ?? "no answer")
        let ackedWhileDemoted = producers.acked.count
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(5)) { producers.refused.count >= 40 })
        // Undoing a demote: no other root took the writes (qsctl needs --force to be told).
        let promote = try Harness.run("qsctl", ["--node", root.address, "promote", "--force"])
        XCTAssertEqual(promote.status, 0, String(decoding: promote.stderr, as: UTF8.self))
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { producers.acked.count >= ackedWhileDemoted + 50 }, rest.log)
        producers.stop()
        XCTAssertTrue(Harness.waitUntil { httpGet(port: admin, path: "/readyz")?.status == 200 })

        try await assertAccounted(producers, at: root.port)
        XCTAssertGreaterThan(metricValue(port: admin, "qs_rest_batches_failed_total") ?? 0, 0)
        XCTAssertEqual(try rest.stop(), 0)
    }

    /// qsrest given both roots (`--root L,N`) follows a cut-over by itself: the demoted L
    /// refuses its next batch as not writable, qsrest moves to N, where its checkpoint
    /// arrived with the mirrored entries, and goes on; nothing answered 200 is missing from
    /// N, nothing answered with an error is there.
    func testQsrestGivenBothRootsFollowsACutover() async throws {
        let legacy = try RootNode(data: tmp.appendingPathComponent("L"), logDir: tmp)
        let new = try RootNode(data: tmp.appendingPathComponent("N"), logDir: tmp)
        let mirror = try DaemonProcess("qsqsbridge", ["--source", "qs://\(legacy.address)", "--root", new.address, "--mode", "compatible",
                                                      "--batch-interval", "50ms", "--log-format", "text"], logDir: tmp)
        let (rest, port, admin) = try startRest(root: "\(legacy.address),\(new.address)", acl: try writeACL())
        let producers = Producers(count: 2, port: port)
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { producers.acked.count >= 30 }, rest.log)
        let cutover = try Harness.run("qsctl", ["cutover", "--from", legacy.address, "--to", new.address, "--timeout", "30s"])
        XCTAssertEqual(cutover.status, 0, String(decoding: cutover.stderr, as: UTF8.self))
        let before = producers.acked.count
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(30)) { producers.acked.count >= before + 30 }, rest.log)
        producers.stop()
        XCTAssertTrue(Harness.waitUntil { httpGet(port: admin, path: "/readyz")?.status == 200 })
        XCTAssertGreaterThanOrEqual(metricValue(port: admin, "qs_bridge_root_failovers_total") ?? 0, 1)
        XCTAssertTrue(rest.log.contains("root failover"), rest.log)

        try await assertAccounted(producers, at: new.port)
        XCTAssertEqual(try rest.stop(), 0)
        _ = try? mirror.stop()
    }

    /// qsrest given `--root L,N` where N is an empty root, not yet a mirror of L: when L dies,
    /// N holds none of qsrest's writes, so qsrest does not move there (it wrote the
    /// producers' writes into N, 177 acknowledged writes only there, and stayed after L
    /// came back). Its /readyz says why; once L is back the writes go on there, every one
    /// answered 200 at L and none at N.
    func testQsrestDoesNotMoveToARootThatHoldsNoneOfItsWrites() async throws {
        let data = tmp.appendingPathComponent("L")
        let socket = tmp.appendingPathComponent("L.sock").path
        var legacy = try RootNode(data: data, logDir: tmp, extraArgs: ["--unix", socket])
        let empty = try RootNode(data: tmp.appendingPathComponent("N"), logDir: tmp)
        let (rest, port, admin) = try startRest(root: "unix:\(socket),\(empty.address)", acl: try writeACL())
        let producers = Producers(count: 2, port: port)
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(20)) { producers.acked.count >= 30 }, rest.log)
        try legacy.daemon.stop(signal: SIGKILL)
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(30)) {
            let ready = httpGet(port: admin, path: "/readyz")
            return ready?.status == 503 && ready?.body.contains("not a copy of it") == true
        }, httpGet(port: admin, path: "/readyz")?.body ?? rest.log)
        legacy = try RootNode(data: data, logDir: tmp, extraArgs: ["--unix", socket])
        let before = producers.acked.count
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(30)) { producers.acked.count >= before + 30 }, rest.log)
        producers.stop()
        try await assertAccounted(producers, at: legacy.port)
        let n = try await QSClient.connect(host: "127.0.0.1", port: empty.port)
        let onN = try await n.checkpoint(sourceID: "qsrest:test")
        XCTAssertNil(onN, "nothing of qsrest's at N")
        let nHead = try await n.head().index
        XCTAssertEqual(nHead, 0, "N took no write")
        await n.close()
        XCTAssertEqual(metricValue(port: admin, "qs_bridge_root_failovers_total"), 0, rest.log)
        XCTAssertEqual(try rest.stop(), 0)
    }

    /// The same at a process's first connection: qsrest started while L (its first
    /// address) is down has seen no position to compare N with, and took the empty N at
    /// once. Now it takes an address past the first only if it carries the writer's history
    /// (its checkpoint, a promotion, a cluster): it waits for L, /readyz says why, and the
    /// producers' writes go to L once it answers. A promoted N (L gone, the cut-over done by
    /// hand) is taken by a fresh process.
    func testQsrestStartedWhileItsFirstRootIsDownDoesNotTakeAnEmptyRoot() async throws {
        let data = tmp.appendingPathComponent("L")
        let socket = tmp.appendingPathComponent("L.sock").path
        let empty = try RootNode(data: tmp.appendingPathComponent("N"), logDir: tmp)
        let (rest, port, admin) = try startRest(root: "unix:\(socket),\(empty.address)", acl: try writeACL(),
                                                extra: ["--commit-timeout", "2s"])
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(30)) {
            let ready = httpGet(port: admin, path: "/readyz")
            return ready?.status == 503 && ready?.body.contains("not known to be a copy of it") == true
        }, httpGet(port: admin, path: "/readyz")?.body ?? rest.log)
        let refused = httpPost(port: port, path: "/rpc/set", contentType: "application/x-www-form-urlencoded",
                               body: Array("key=dns%2Fearly&value=1".utf8), headers: [("Authorization", "Bearer dns-token")])
        XCTAssertEqual(refused?.status, 503, "nothing is acknowledged while no root is known: \(refused?.body ?? "")")
        let n = try await QSClient.connect(host: "127.0.0.1", port: empty.port)
        let nHead = try await n.head().index
        XCTAssertEqual(nHead, 0, "N took no write")

        let legacy = try RootNode(data: data, logDir: tmp, extraArgs: ["--unix", socket])
        let producers = Producers(count: 2, port: port)
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(30)) { producers.acked.count >= 30 }, rest.log)
        producers.stop()
        try await assertAccounted(producers, at: legacy.port)
        let nHeadAfter = try await n.head().index
        XCTAssertEqual(nHeadAfter, 0, "N took no write")
        XCTAssertEqual(metricValue(port: admin, "qs_bridge_root_failovers_total"), 0, rest.log)
        XCTAssertEqual(try rest.stop(), 0)

        // N made a copy of L and promoted (L gone for good): a fresh qsrest takes it.
        let mirror = try DaemonProcess("qsqsbridge", ["--source", "qs://\(legacy.address)", "--root", empty.address, "--mode", "compatible",
                                                      "--batch-interval", "50ms", "--log-format", "text"], logDir: tmp)
        let l = try await QSClient.connect(unixPath: socket)
        let lHead = try await l.head()
        await l.close()
        let mirrored = await Harness.eventually(timeout: .seconds(30)) { (try? await n.head()) == lHead }
        XCTAssertTrue(mirrored, mirror.log)
        try legacy.daemon.stop(signal: SIGKILL)
        _ = try? mirror.stop()
        let promote = try Harness.run("qsctl", ["--node", empty.address, "promote", "--force"])
        XCTAssertEqual(promote.status, 0, String(decoding: promote.stderr, as: UTF8.self))
        let (again, admin2) = try await writeThrough(root: "unix:\(socket),\(empty.address)", landingAt: empty.port)
        XCTAssertEqual(httpGet(port: admin2, path: "/readyz")?.status, 200)
        await n.close()
        XCTAssertEqual(try again.stop(), 0)
    }

    /// `--root N,L` with N a mirror of L (the order after a cut-over, given before it) and a
    /// new source id: N answers but takes no writes, and L, which holds N's head, carries
    /// the history although it holds no checkpoint of the new id and was never promoted.
    /// The rule above refused L, and every write timed out against the mirror.
    func testANewWriterPassesOverAMirrorToTheRootItMirrors() async throws {
        let legacy = try RootNode(data: tmp.appendingPathComponent("L"), logDir: tmp)
        let new = try RootNode(data: tmp.appendingPathComponent("N"), logDir: tmp)
        XCTAssertEqual(try Harness.run("qsctl", ["--node", legacy.address, "put", "seed", "1"]).status, 0)
        let mirror = try Harness.run("qsqsbridge", ["--source", "qs://\(legacy.address)", "--root", new.address, "--mode", "compatible", "--once"],
                                     killAfter: .seconds(60))
        XCTAssertEqual(mirror.status, 0, String(decoding: mirror.stderr, as: UTF8.self))
        let (rest, admin) = try await writeThrough(root: "\(new.address),\(legacy.address)", landingAt: legacy.port)
        XCTAssertEqual(metricValue(port: admin, "qs_bridge_root_in_use{address=\"\(legacy.address)\"}"), 1)
        XCTAssertEqual(try rest.stop(), 0)

        // An empty root listed after the mirror holds none of its history: passed over.
        let empty = try RootNode(data: tmp.appendingPathComponent("E"), logDir: tmp)
        let (other, otherPort, otherAdmin) = try startRest(root: "\(new.address),\(empty.address)", acl: try writeACL(),
                                                           extra: ["--source-id", "qsrest:other", "--commit-timeout", "2s"])
        let refused = httpPost(port: otherPort, path: "/rpc/set", contentType: "application/x-www-form-urlencoded",
                               body: Array("key=dns%2Fx&value=1".utf8), headers: [("Authorization", "Bearer dns-token")])
        XCTAssertEqual(refused?.status, 503, refused?.body ?? "")
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(30)) {
            other.log.contains("no root address takes this writer's writes") && other.log.contains("does not hold the head of \(new.address)")
        }, other.log)
        // Both reasons, the mirror's and the empty root's, where the operator looks first.
        let ready = httpGet(port: otherAdmin, path: "/readyz")
        XCTAssertEqual(ready?.status, 503)
        XCTAssertTrue(ready?.body.contains("a compatible mirror (write_role mirror)") == true, ready?.body ?? "")
        XCTAssertTrue(ready?.body.contains("does not hold the head of \(new.address)") == true, ready?.body ?? "")
        let e = try await QSClient.connect(host: "127.0.0.1", port: empty.port)
        let emptyHead = try await e.head().index
        await e.close()
        XCTAssertEqual(emptyHead, 0, "the empty root took no write")
        XCTAssertEqual(try other.stop(), 0)
    }

    /// A qsrest on `root` taking a producer's writes until ten are acknowledged, each then
    /// found at the root on `port`; the qsrest and its admin port.
    func writeThrough(root: String, landingAt port: Int) async throws -> (DaemonProcess, Int) {
        let (rest, restPort, admin) = try startRest(root: root, acl: try writeACL())
        let producers = Producers(count: 1, port: restPort)
        XCTAssertTrue(Harness.waitUntil(timeout: .seconds(30)) { producers.acked.count >= 10 }, rest.log)
        producers.stop()
        try await assertAccounted(producers, at: port)
        return (rest, admin)
    }

    /// Every key answered 200 is at the root on `port`; none answered with an error is.
    func assertAccounted(_ producers: Producers, at port: Int, file: StaticString = #filePath, line: UInt = #line) async throws {
        let client = try await QSClient.connect(host: "127.0.0.1", port: port)
        var missing = [String]()
        for key in producers.acked.all where try await client.get(Array(key.utf8)) == nil { missing.append(key) }
        XCTAssertEqual(missing, [], "acknowledged writes missing at the root", file: file, line: line)
        var applied = [String]()
        for key in producers.refused.all where try await client.get(Array(key.utf8)) != nil { applied.append(key) }
        XCTAssertEqual(applied, [], "writes answered with an error are at the root", file: file, line: line)
        await client.close()
    }
}

/// Producers writing `dns/pP-I` through qsrest's `/rpc/set` in a closed loop, each key
/// recorded as acknowledged (200) or refused (any other answer).
final class Producers: @unchecked Sendable {
    let acked = AckedKeys(), refused = AckedKeys()
    private let flag = StopFlag()
    private var threads = [JoinableThread]()

    /// Producers writing to qsrest on `port`, which may change (a restarted qsrest).
    init(count: Int, port: PortBox) {
        threads = (0..<count).map { [acked, refused, flag] p in
            JoinableThread {
                var i = 0
                while !flag.isSet {
                    let key = "dns/p\(p)-\(i)"
                    let r = httpPost(port: port.value, path: "/rpc/set", contentType: "application/x-www-form-urlencoded",
                                     body: Array("key=\(key.replacingOccurrences(of: "/", with: "%2F"))&value=\(i)".utf8),
                                     headers: [("Authorization", "Bearer dns-token")])
                    if r?.status == 200 { acked.add(key) } else { refused.add(key) }
                    i += 1
                }
            }
        }
    }

    convenience init(count: Int, port: Int) { self.init(count: count, port: PortBox(port)) }

    func stop() {
        flag.set()
        for t in threads { t.wait() }
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
