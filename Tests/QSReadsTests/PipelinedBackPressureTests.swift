import Foundation
import KTFormats
import QSClient
import QSTesting
import QSWire
import XCTest

/// A client that sends many requests for a large value in one write and reads no reply: the
/// node answers as far as the socket takes the replies and then waits, on every port that
/// answers reads (memcached on the event loops and on reader threads, KT HTTP's fast path and
/// NIO's, the write port's `Get`); once the client reads, every reply comes, in order.
/// Unbounded, each of these cost the node a reply per request: 300 gets of a 1 MiB value
/// were 300 MB within a second.
final class PipelinedBackPressureTests: XCTestCase {
    var tmp: URL!
    var node: RootNode!
    static let valueBytes = 1 << 20
    static let requests = 200
    /// The write port's `Get big` frame: length (type and payload, big endian), type, payload.
    static let getFrame: [UInt8] = {
        let get = Request.get(key: Array("big".utf8)).frame()
        return withUnsafeBytes(of: UInt32(1 + get.payload.count).bigEndian) { Array($0) } + [get.type] + get.payload
    }()

    override func setUp() async throws {
        tmp = try Harness.tempDir("backpressure")
    }

    override func tearDown() async throws {
        if let node { _ = try? node.daemon.stop() }
        Harness.cleanUp(tmp, failed: (testRun?.totalFailureCount ?? 0) > 0)
    }

    func start(_ extra: [String] = []) async throws {
        node = try RootNode(data: tmp.appendingPathComponent("data"), logDir: tmp,
                            extraArgs: ["--memcached", "127.0.0.1:0", "--kt-http", "127.0.0.1:0"] + extra)
        let client = try await QSClient.connect(host: "127.0.0.1", port: node.port)
        let value = [UInt8](repeating: UInt8(ascii: "v"), count: Self.valueBytes)
        _ = try await client.write([.set(key: Array("big".utf8), value: value, expiry: nil)], sourceID: "t")
        await client.close()
    }

    /// The node's resident memory, bytes.
    func rss() throws -> Int {
        let status = try String(contentsOfFile: "/proc/\(node.daemon.pid)/status", encoding: .utf8)
        let line = try XCTUnwrap(status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") })
        return try XCTUnwrap(Int(line.split(separator: " ", omittingEmptySubsequences: true)[1])) * 1024
    }

    /// Sends `request` `Self.requests` times in one go on a connection with a small receive
    /// buffer, reads nothing while the node is watched for 3 s (the answered count from
    /// `served` and its memory), then reads every reply: at least `replyBytes` each.
    func check(port: Int, request: [UInt8], replyBytes: Int, served: () -> Double?,
               file: StaticString = #filePath, line: UInt = #line) throws {
        let fd = try XCTUnwrap(Harness.connectLoopback(port: port))
        defer { close(fd) }
        var small: Int32 = 64 << 10
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        let before = try rss()
        let servedBefore = served() ?? 0
        let all = Array([[UInt8]](repeating: request, count: Self.requests).joined())
        var sent = 0
        while sent < all.count {
            let n = all[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            XCTAssertGreaterThan(n, 0, "send failed: errno \(errno)", file: file, line: line)
            guard n > 0 else { return }
            sent += n
        }
        // Watched, not waited on: a node without back-pressure answers everything well
        // within this window (and the watch ends as soon as it has).
        var peak = before, answered = 0.0
        let end = ContinuousClock.now + .seconds(3)
        while ContinuousClock.now < end {
            peak = max(peak, try rss())
            answered = (served() ?? 0) - servedBefore
            if answered >= Double(Self.requests) { break }
            Thread.sleep(forTimeInterval: 0.1)
        }
        XCTAssertLessThan(answered, Double(Self.requests) / 3, "requests answered while the client read nothing", file: file, line: line)
        XCTAssertLessThan(peak - before, 100 << 20, "the node grew by \((peak - before) >> 20) MiB for a client that reads nothing",
                          file: file, line: line)
        // The client reads: every reply comes.
        var received = 0
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var tv = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        while received < Self.requests * replyBytes {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { break }
            received += n
        }
        XCTAssertGreaterThanOrEqual(received, Self.requests * replyBytes, "replies missing once the client read", file: file, line: line)
    }

    /// A connection that sent a large body and was answered holds none of it while it stays
    /// open: a cleared buffer kept its capacity, so 20 idle keep-alive connections that had
    /// each sent a 4 MiB get_bulk held 80 MiB (seen: RSS +92 MiB, +14 MiB now).
    func testIdleKTConnectionsHoldNoneOfTheBodiesTheySent() async throws {
        try await start()
        let kt = try node.daemon.port("kt-http")
        let body = Array(String(repeating: "_k\t\n", count: 1 << 20).utf8)
        let request = Array("POST /rpc/get_bulk HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.count)\r\n\r\n".utf8) + body
        let before = try rss()
        var fds = [Int32]()
        defer { fds.forEach { close($0) } }
        for _ in 0..<20 {
            let fd = try XCTUnwrap(Harness.connectLoopback(port: kt))
            fds.append(fd)
            var sent = 0
            while sent < request.count {
                let n = request[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                XCTAssertGreaterThan(n, 0)
                guard n > 0 else { return }
                sent += n
            }
            // The answer's head: the request was taken whole and answered.
            var tv = timeval(tv_sec: 10, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            var got = [UInt8]()
            var buffer = [UInt8](repeating: 0, count: 4096)
            while !got.contains(13) {
                let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                guard n > 0 else { break }
                got += buffer[..<n]
            }
            XCTAssertTrue(String(decoding: got, as: UTF8.self).hasPrefix("HTTP/1.1 200"), String(decoding: got.prefix(100), as: UTF8.self))
        }
        let grown = try rss() - before
        XCTAssertLessThan(grown, 40 << 20, "20 idle connections hold \(grown >> 20) MiB after bodies of 4 MiB each")
    }

    /// An idle write-port connection keeps none of the replies it was sent: NIO's encoder
    /// kept the buffer of the largest reply for the connection's life, so 100 connections
    /// that had each read a 1 MiB value held 100 MiB, anyone's to ask (a get needs no
    /// token). Now the growth is the allocator's (about 20 MiB, whatever the count).
    func testIdleWritePortConnectionsHoldNoneOfTheRepliesTheyRead() async throws {
        try await start()
        let before = try rss()
        var clients = [QSClient]()
        for _ in 0..<100 {
            let c = try await QSClient.connect(host: "127.0.0.1", port: node.port)
            clients.append(c)
            let got = try await c.get(Array("big".utf8))
            XCTAssertEqual(got?.value.count, Self.valueBytes)
        }
        let grown = try rss() - before
        for c in clients { await c.close() }
        XCTAssertLessThan(grown, 50 << 20, "100 idle connections hold \(grown >> 20) MiB after replies of 1 MiB each")
    }

    /// One key named many times in one small request: memcached's multi-key `get` stops at
    /// `maxReplyBytes` (64 MiB) with memcached's own error, KT's binary `get_bulk` answers
    /// each key once (as `/rpc/get_bulk` does). Before, 100 × a 1 MiB key built a 100 MiB
    /// reply from a 400-byte line (seen by helper-73: 533 MB from 1.8 KB, 1.6 GB of RSS).
    func testOneKeyNamedManyTimesDoesNotMultiplyTheReply() async throws {
        try await start()
        let mc = try node.daemon.port("memcached"), kt = try node.daemon.port("kt-http")
        let many = "get " + Array(repeating: "big", count: 100).joined(separator: " ") + "\r\n"
        let refused = RawSocket.exchange(port: mc, Array((many + "get big big\r\nquit\r\n").utf8))
        let text = String(decoding: refused.prefix(60), as: UTF8.self)
        XCTAssertTrue(text.hasPrefix("SERVER_ERROR out of memory writing get response\r\n"), text)
        // Two of it are answered whole, after the refusal, on the same connection.
        XCTAssertEqual(refused.count, 49 + 2 * ("VALUE big 0 1048576\r\n".utf8.count + Self.valueBytes + 2) + "END\r\n".utf8.count, "the get of two came back whole")

        let keys = [KTBinaryKey](repeating: KTBinaryKey(db: 0, key: Array("big".utf8)), count: 200)
        let bulk = RawSocket.exchange(port: kt, KTBinaryRequest.getBulk(flags: 0, keys: keys).encoded() + KTBinaryRequest.setBulk(flags: 0, records: []).encoded())
        let one = KTBinaryRecord(db: 0, key: Array("big".utf8), value: [UInt8](repeating: UInt8(ascii: "v"), count: Self.valueBytes), expiration: KTExpiration.never)
        XCTAssertEqual(bulk.count, KTBinaryResponse.getBulk(records: [one]).encoded().count + 1, "one record, then the refusal of the set_bulk")
    }

    func testMemcachedKTHTTPAndTheWritePortAnswerNoFasterThanTheClientReads() async throws {
        try await start()
        let mc = try node.daemon.port("memcached"), kt = try node.daemon.port("kt-http")
        try check(port: mc, request: Array("get big\r\n".utf8), replyBytes: Self.valueBytes) {
            node.metric("qs_memcached_requests_total{command=\"get\"}")
        }
        // KT's fast path (GET /KEY), and NIO's pipeline (a request the fast path hands over:
        // a POST with a body).
        try check(port: kt, request: Array("GET /big HTTP/1.1\r\nHost: x\r\n\r\n".utf8), replyBytes: Self.valueBytes) {
            node.metric("qs_kt_http_requests_total{command=\"rest_get\"}")
        }
        let post = Array("POST /rpc/get HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\r\nkey=big".utf8)
        try check(port: kt, request: post, replyBytes: Self.valueBytes) {
            node.metric("qs_kt_http_requests_total{command=\"get\"}")
        }
        try check(port: node.port, request: Self.getFrame, replyBytes: Self.valueBytes) {
            node.metric("qs_requests_total{type=\"get\"}")
        }
    }

    /// A client that pipelines and then reads its replies slowly is not idle while it reads:
    /// every reply comes though taking them lasts longer than --idle-timeout (before, the
    /// held requests counted as silence and the connection was cut mid-value).
    func testAClientReadingItsRepliesSlowlyGetsThemAllPastTheIdleTimeout() async throws {
        try await start(["--idle-timeout", "2s"])
        for (port, request) in [(try node.daemon.port("memcached"), Array("get big\r\n".utf8)), (node.port, Self.getFrame)] {
            let fd = try XCTUnwrap(Harness.connectLoopback(port: port))
            defer { close(fd) }
            var small: Int32 = 64 << 10
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
            let count = 12
            let all = Array([[UInt8]](repeating: request, count: count).joined())
            XCTAssertEqual(all.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }, all.count)
            // About 1.3 MB/s: the 12 MiB take some 10 s, five idle timeouts.
            var received = 0
            var buffer = [UInt8](repeating: 0, count: 128 << 10)
            var tv = timeval(tv_sec: 10, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            while received < count * Self.valueBytes {
                let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                guard n > 0 else { break }
                received += n
                usleep(100_000)
            }
            XCTAssertGreaterThanOrEqual(received, count * Self.valueBytes, "port \(port): the connection ended while its replies were being read")
        }
    }

    /// While a node drains on SIGTERM (here a client that does not read holds its
    /// connection open), `/readyz` says it is stopping at once: a balancer sends nothing
    /// more. Before, it said ready until the listeners had drained.
    func testReadyzSaysStoppingAsSoonAsTheDrainBegins() async throws {
        try await start(["--shutdown-timeout", "20s"])
        let fd = try XCTUnwrap(Harness.connectLoopback(port: try node.daemon.port("memcached")))
        defer { close(fd) }
        var small: Int32 = 64 << 10
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        let all = Array([[UInt8]](repeating: Array("get big\r\n".utf8), count: 50).joined())
        XCTAssertEqual(all.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }, all.count)
        XCTAssertEqual(node.readyz()?.status, 200)
        kill(node.daemon.pid, SIGTERM)
        try await waitFor("/readyz 503 'stopping' while the node drains", timeout: .seconds(5), pollEvery: .milliseconds(50)) {
            node.readyz().map { $0.status == 503 && $0.body.contains("stopping") } ?? false
        }
        XCTAssertTrue(node.daemon.isRunning, "the node is still draining")
    }

    func testMemcachedOnReaderThreadsAnswersNoFasterThanTheClientReads() async throws {
        try await start(["--memcached-threads", "2"])
        try check(port: try node.daemon.port("memcached"), request: Array("get big\r\n".utf8), replyBytes: Self.valueBytes) {
            node.metric("qs_memcached_requests_total{command=\"get\"}")
        }
    }
}
